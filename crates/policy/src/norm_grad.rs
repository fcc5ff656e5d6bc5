//! RMSNorm of the training forward on the CPU (`Autodiff<Flex>`, f32) as one graph node with a
//! closed-form backward, where burn's ops record six (square, mean, add, sqrt, divide, scale),
//! each keeping its inputs. Per row `x` of width `d`, with `r = 1 / √(Σx²/d + ε)`:
//!
//! ```text
//! y = x · r ∘ γ      g = dy ∘ γ      dx = r · g − x · r³ · (Σ g·x) / d      dγ = Σ_rows dy ∘ x · r
//! ```
//!
//! The node keeps `x` (shared, not copied), `γ` and `r`. On the plain CPU backend (prefill,
//! scoring, decode) the forward is the same one-pass kernel.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::nn::RmsNorm;
use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::flex_tensor::{
    flex_values as values, from_autodiff_flex, from_f32, to_autodiff_flex, to_flex,
};

/// What the backward needs.
#[derive(Debug, Clone)]
struct Saved {
    shape: Vec<usize>,
    x: FlexTensor,
    gamma: Vec<f32>,
    /// `r` of each row.
    inverse_rms: Vec<f32>,
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 2> for NormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved {
            shape,
            x,
            gamma,
            inverse_rms,
        } = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let dy = values(&dy);
        let x = values(&x);
        let d = gamma.len();
        let [x_parent, gamma_parent] = ops.parents;
        // dx row by row in place, dγ summed over blocks of rows, in parallel.
        let mut dx = vec![0.0f32; x.len()];
        let dg = dx
            .par_chunks_mut(d * ROWS)
            .zip(x.par_chunks(d * ROWS).zip(dy.par_chunks(d * ROWS)))
            .zip(inverse_rms.par_chunks(ROWS))
            .map(|((dx, (x, dy)), rs)| {
                let mut dg = vec![0.0f32; d];
                for (((dx, x), dy), &r) in dx
                    .chunks_exact_mut(d)
                    .zip(x.chunks_exact(d))
                    .zip(dy.chunks_exact(d))
                    .zip(rs)
                {
                    let dot: f32 = (0..d).map(|i| dy[i] * gamma[i] * x[i]).sum();
                    let c = r * r * r * dot / d as f32;
                    for i in 0..d {
                        dx[i] = r * dy[i] * gamma[i] - x[i] * c;
                        dg[i] += dy[i] * x[i] * r;
                    }
                }
                dg
            })
            .reduce(
                || vec![0.0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        if let Some(node) = x_parent {
            let grad = FlexTensor::from_data(TensorData::new(dx, shape.clone()));
            grads.register::<Flex>(node.id, grad);
        }
        if let Some(node) = gamma_parent {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dg, [d])));
        }
    }
}

/// Rows per parallel task.
const ROWS: usize = 64;

/// `y = x · r ∘ γ` row by row (rows of width `γ.len()`), and each row's `r`.
fn normalize(x: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut y = vec![0.0f32; x.len()];
    let mut inverse_rms = vec![0.0f32; x.len() / d];
    y.par_chunks_mut(d * ROWS)
        .zip(x.par_chunks(d * ROWS))
        .zip(inverse_rms.par_chunks_mut(ROWS))
        .for_each(|((y, x), rs)| {
            for ((y, x), r) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(rs) {
                let mean_square = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                *r = 1.0 / (mean_square + eps).sqrt();
                for i in 0..d {
                    y[i] = x[i] * *r * gamma[i];
                }
            }
        });
    (y, inverse_rms)
}

/// `norm.forward(x)` as one autodiff node when `B` is `Autodiff<Flex>` with f32 values, in one
/// pass when `B` is `Flex`, else burn's ops.
pub(crate) fn rms_norm<B: Backend, const D: usize>(
    norm: &RmsNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    plain(norm, &x)
        .or_else(|| fused(norm, x.clone()))
        .unwrap_or_else(|| norm.forward(x))
}

/// The forward on `Flex` tensors (no graph), when `x` is contiguous f32.
fn plain<B: Backend, const D: usize>(norm: &RmsNorm<B>, x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let dims = x.dims();
    let (x, gamma) = (to_flex(x.clone())?, to_flex(norm.gamma.val())?);
    let gamma = gamma.as_slice::<f32>()?;
    if gamma.len() != dims[D - 1] || gamma.is_empty() {
        return None;
    }
    let (y, _) = normalize(x.as_slice::<f32>()?, gamma, norm.epsilon as f32);
    from_f32(y, dims)
}

fn fused<B: Backend, const D: usize>(norm: &RmsNorm<B>, x: Tensor<B, D>) -> Option<Tensor<B, D>> {
    let dims = x.dims();
    let x = to_autodiff_flex(x)?;
    let gamma = to_autodiff_flex(norm.gamma.val())?;
    let d = dims[D - 1];
    let gamma_values = values(&gamma.primitive).into_owned();
    if gamma_values.len() != d || d == 0 {
        return None;
    }
    let x_values = values(&x.primitive);
    let (y, inverse_rms) = normalize(&x_values, &gamma_values, norm.epsilon as f32);
    let y = FlexTensor::from_data(TensorData::new(y, dims.to_vec()));
    let node = match NormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                shape: dims.to_vec(),
                x: x.primitive,
                gamma: gamma_values,
                inverse_rms,
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_autodiff_flex(node)
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::tensor::Distribution;

    use burn::backend::Autodiff;

    use super::*;

    type Ad = Autodiff<Flex>;

    #[test]
    fn values_and_gradients_match_burns_rms_norm() {
        let device = Default::default();
        Flex::seed(&device, 4);
        let normal = Distribution::Normal(0.0, 1.0);
        // 150 rows: several parallel blocks of rows, the last one partial.
        let x = Tensor::<Flex, 3>::random([3, 50, 24], normal, &device);
        let gamma = Tensor::<Flex, 1>::random([24], normal, &device);
        let w = Tensor::<Flex, 3>::random([3, 50, 24], normal, &device);
        let run = |use_fused: bool| {
            let norm = RmsNorm::<Ad> {
                gamma: Param::from_tensor(Tensor::from_inner(gamma.clone()).require_grad()),
                epsilon: 1e-5,
            };
            let x = Tensor::<Ad, 3>::from_inner(x.clone()).require_grad();
            let y = match use_fused {
                true => fused(&norm, x.clone()).expect("the fused path runs"),
                false => norm.forward(x.clone()),
            };
            let out: Vec<f32> = y.clone().inner().into_data().into_vec().unwrap();
            let grads = (y * Tensor::from_inner(w.clone())).sum().backward();
            let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().into_vec().unwrap();
            let dg: Vec<f32> = norm
                .gamma
                .val()
                .grad(&grads)
                .unwrap()
                .into_data()
                .into_vec()
                .unwrap();
            (out, dx, dg)
        };
        let (got, want) = (run(true), run(false));
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max)
        };
        assert!(
            worst(&got.0, &want.0) < 1e-6,
            "y: {}",
            worst(&got.0, &want.0)
        );
        assert!(
            worst(&got.1, &want.1) < 1e-5,
            "dx: {}",
            worst(&got.1, &want.1)
        );
        assert!(
            worst(&got.2, &want.2) < 1e-5,
            "dγ: {}",
            worst(&got.2, &want.2)
        );
        // The plain backend's one-pass forward.
        let norm = RmsNorm::<Flex> {
            gamma: Param::from_tensor(gamma.clone()),
            epsilon: 1e-5,
        };
        let plain_y: Vec<f32> = plain(&norm, &x)
            .expect("the plain path runs")
            .into_data()
            .into_vec()
            .unwrap();
        assert!(
            worst(&plain_y, &want.0) < 1e-6,
            "plain y: {}",
            worst(&plain_y, &want.0)
        );
    }
}
