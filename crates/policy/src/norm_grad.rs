//! RMSNorm of the training forward on the CPU (`Autodiff<Flex>`, f32) as one graph node with a
//! closed-form backward, where burn's ops record six (square, mean, add, sqrt, divide, scale),
//! each keeping its inputs. Per row `x` of width `d`, with `r = 1 / √(Σx²/d + ε)`:
//!
//! ```text
//! y = x · r ∘ γ      g = dy ∘ γ      dx = r · g − x · r³ · (Σ g·x) / d      dγ = Σ_rows dy ∘ x · r
//! ```
//!
//! The node keeps `x` (shared, not copied), `γ` and `r`.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::nn::RmsNorm;
use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::flex_tensor::{flex_values as values, from_autodiff_flex, to_autodiff_flex};

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
        let dy = values(&grads.consume::<Flex>(&ops.node));
        let x = values(&x);
        let d = gamma.len();
        let [x_parent, gamma_parent] = ops.parents;
        // dx per row, and each row's share of dγ, in parallel over rows.
        let rows: Vec<(Vec<f32>, Vec<f32>)> = x
            .par_chunks(d)
            .zip(dy.par_chunks(d))
            .zip(inverse_rms.par_iter())
            .map(|((x, dy), &r)| {
                let dot: f32 = dy
                    .iter()
                    .zip(&gamma)
                    .zip(x)
                    .map(|((dy, g), x)| dy * g * x)
                    .sum();
                let c = r * r * r * dot / d as f32;
                let dx = (0..d).map(|i| r * dy[i] * gamma[i] - x[i] * c).collect();
                let dg = (0..d).map(|i| dy[i] * x[i] * r).collect();
                (dx, dg)
            })
            .collect();
        if let Some(node) = x_parent {
            let dx: Vec<f32> = rows.iter().flat_map(|(dx, _)| dx.iter().copied()).collect();
            let grad = FlexTensor::from_data(TensorData::new(dx, shape.clone()));
            grads.register::<Flex>(node.id, grad);
        }
        if let Some(node) = gamma_parent {
            let mut dg = vec![0.0f32; d];
            for (_, row) in &rows {
                dg.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dg, [d])));
        }
    }
}

/// `norm.forward(x)` as one autodiff node when `B` is `Autodiff<Flex>` with f32 values, else
/// burn's ops.
pub(crate) fn rms_norm<B: Backend, const D: usize>(
    norm: &RmsNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    fused(norm, x.clone()).unwrap_or_else(|| norm.forward(x))
}

fn fused<B: Backend, const D: usize>(norm: &RmsNorm<B>, x: Tensor<B, D>) -> Option<Tensor<B, D>> {
    let dims = x.dims();
    let x = to_autodiff_flex(x)?;
    let gamma = to_autodiff_flex(norm.gamma.val())?;
    let d = dims[D - 1];
    let gamma_values = values(&gamma.primitive);
    if gamma_values.len() != d || d == 0 {
        return None;
    }
    let x_values = values(&x.primitive);
    let eps = norm.epsilon as f32;
    let (y, inverse_rms): (Vec<Vec<f32>>, Vec<f32>) = x_values
        .par_chunks(d)
        .map(|row| {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let rms = (mean_square + eps).sqrt();
            let y = row
                .iter()
                .zip(&gamma_values)
                .map(|(v, g)| v / rms * g)
                .collect();
            (y, 1.0 / rms)
        })
        .unzip();
    let y: Vec<f32> = y.into_iter().flatten().collect();
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
        let x = Tensor::<Flex, 3>::random([2, 5, 24], normal, &device);
        let gamma = Tensor::<Flex, 1>::random([24], normal, &device);
        let w = Tensor::<Flex, 3>::random([2, 5, 24], normal, &device);
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
    }
}
