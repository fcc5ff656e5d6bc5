//! SwiGLU's product of the training forward on the CPU (`Autodiff<Flex>`, f32) as one graph
//! node with a closed-form backward, where burn's ops record three (sigmoid, two products),
//! each keeping its inputs and the sigmoid's output. Elementwise, with `σ` the logistic
//! function:
//!
//! ```text
//! h = silu(g) ⊙ u = g σ(g) ⊙ u      dg = dh ⊙ u ⊙ σ(g) (1 + g (1 − σ(g)))      du = dh ⊙ g σ(g)
//! ```
//!
//! The node keeps `g` and `u` (shared, not copied) and recomputes `σ(g)` in the backward. On
//! the plain CPU backend (prefill, scoring, decode) the forward is the same one-pass kernel.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::silu;
use opd_divergences::fast_exp::exp;
use rayon::prelude::*;

use crate::flex_tensor::{
    flex_values as values, from_autodiff_flex, from_f32, to_autodiff_flex, to_flex,
};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// What the backward needs.
#[derive(Debug, Clone)]
struct Saved {
    shape: Vec<usize>,
    gate: FlexTensor,
    up: FlexTensor,
}

#[derive(Debug)]
struct SwigluBackward;

/// `σ(x) = 1 / (1 + e^(−x))`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

impl Backward<Flex, 2> for SwigluBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved { shape, gate, up } = ops.state;
        let dh = grads.consume::<Flex>(&ops.node);
        let dh = values(&dh);
        let (g, u) = (values(&gate), values(&up));
        let [gate_parent, up_parent] = ops.parents;
        let mut dg = vec![0.0f32; g.len()];
        let mut du = vec![0.0f32; g.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .zip(dh.par_chunks(CHUNK))
            .for_each(|(((dg, du), (g, u)), dh)| {
                for i in 0..g.len() {
                    let s = sigmoid(g[i]);
                    dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                    du[i] = dh[i] * g[i] * s;
                }
            });
        for (parent, grad) in [(gate_parent, dg), (up_parent, du)] {
            if let Some(node) = parent {
                let grad = FlexTensor::from_data(TensorData::new(grad, shape.clone()));
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// `silu(gate) ⊙ up` as one autodiff node when `B` is `Autodiff<Flex>` with f32 values, in one
/// pass when `B` is `Flex`, else burn's ops.
pub(crate) fn swiglu<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    plain(&gate, &up)
        .or_else(|| fused(gate.clone(), up.clone()))
        .unwrap_or_else(|| silu(gate) * up)
}

/// `h = g σ(g) ⊙ u` elementwise, in parallel chunks.
fn forward_values(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut h = vec![0.0f32; g.len()];
    h.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(h, (g, u))| {
            for i in 0..g.len() {
                h[i] = g[i] * sigmoid(g[i]) * u[i];
            }
        });
    h
}

/// The forward on `Flex` tensors (no graph), when both are contiguous f32 of one shape.
fn plain<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    up: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let dims = gate.dims();
    if up.dims() != dims {
        return None;
    }
    let (g, u) = (to_flex(gate.clone())?, to_flex(up.clone())?);
    let h = forward_values(g.as_slice::<f32>()?, u.as_slice::<f32>()?);
    from_f32(h, dims)
}

fn fused<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Option<Tensor<B, D>> {
    let dims = gate.dims();
    if up.dims() != dims {
        return None;
    }
    let (gate, up) = (to_autodiff_flex(gate)?, to_autodiff_flex(up)?);
    let (g, u) = (values(&gate.primitive), values(&up.primitive));
    let h = forward_values(&g, &u);
    let h = FlexTensor::from_data(TensorData::new(h, dims.to_vec()));
    let node = match SwigluBackward
        .prepare::<NoCheckpointing>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                shape: dims.to_vec(),
                gate: gate.primitive,
                up: up.primitive,
            },
            h,
        ),
        OpsKind::UnTracked(prep) => prep.finish(h),
    };
    from_autodiff_flex(node)
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;

    use super::*;

    type Ad = Autodiff<Flex>;

    /// `(h, dL/dg, dL/du)` of `L = Σ h ⊙ w`, fused or by burn's ops.
    fn run(
        g: &Tensor<Flex, 3>,
        u: &Tensor<Flex, 3>,
        w: &Tensor<Flex, 3>,
        use_fused: bool,
    ) -> [Vec<f32>; 3] {
        let g = Tensor::<Ad, 3>::from_inner(g.clone()).require_grad();
        let u = Tensor::<Ad, 3>::from_inner(u.clone()).require_grad();
        let h = match use_fused {
            true => fused(g.clone(), u.clone()).expect("the fused path runs"),
            false => silu(g.clone()) * u.clone(),
        };
        let out: Vec<f32> = h.clone().inner().into_data().into_vec().unwrap();
        let grads = (h * Tensor::from_inner(w.clone())).sum().backward();
        let dg = g.grad(&grads).unwrap().into_data().into_vec().unwrap();
        let du = u.grad(&grads).unwrap().into_data().into_vec().unwrap();
        [out, dg, du]
    }

    fn inputs() -> [Tensor<Flex, 3>; 3] {
        let device = Default::default();
        Flex::seed(&device, 11);
        let normal = Distribution::Normal(0.0, 2.0);
        [0; 3].map(|_| Tensor::<Flex, 3>::random([2, 3, 40], normal, &device))
    }

    #[test]
    fn values_and_gradients_match_burns_ops() {
        let [g, u, w] = inputs();
        let (got, want) = (run(&g, &u, &w, true), run(&g, &u, &w, false));
        for (name, (a, b)) in ["h", "dg", "du"].iter().zip(got.iter().zip(&want)) {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{name}: {worst}");
        }
    }

    /// The one-pass forward of the plain backend against burn's ops (and a non-contiguous
    /// input takes burn's ops).
    #[test]
    fn plain_forward_matches_burns_ops() {
        let [g, u, _] = inputs();
        let want: Vec<f32> = (silu(g.clone()) * u.clone())
            .into_data()
            .into_vec()
            .unwrap();
        let got: Vec<f32> = plain(&g, &u)
            .expect("the plain path runs")
            .into_data()
            .into_vec()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert!(plain(&g.clone().swap_dims(1, 2), &u.swap_dims(1, 2)).is_none());
    }

    #[test]
    fn gradients_match_central_differences_in_f64() {
        let [g, u, w] = inputs();
        let [_, dg, du] = run(&g, &u, &w, true);
        let values = |t: &Tensor<Flex, 3>| -> Vec<f64> {
            t.to_data()
                .into_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect()
        };
        let (g, u, w) = (values(&g), values(&u), values(&w));
        // L(g, u) = Σ silu(g) u w in f64.
        let loss = |g: &[f64], u: &[f64]| -> f64 {
            (0..g.len())
                .map(|i| g[i] / (1.0 + (-g[i]).exp()) * u[i] * w[i])
                .sum()
        };
        let eps = 1e-6;
        for i in (0..g.len()).step_by(7) {
            let bump = |v: &[f64], by: f64| {
                let mut v = v.to_vec();
                v[i] += by;
                v
            };
            let fd_g = (loss(&bump(&g, eps), &u) - loss(&bump(&g, -eps), &u)) / (2.0 * eps);
            let fd_u = (loss(&g, &bump(&u, eps)) - loss(&g, &bump(&u, -eps))) / (2.0 * eps);
            assert!(
                (f64::from(dg[i]) - fd_g).abs() < 1e-4 * (1.0 + fd_g.abs()),
                "dg[{i}]: {} vs {fd_g}",
                dg[i]
            );
            assert!(
                (f64::from(du[i]) - fd_u).abs() < 1e-4 * (1.0 + fd_u.abs()),
                "du[{i}]: {} vs {fd_u}",
                du[i]
            );
        }
    }
}
