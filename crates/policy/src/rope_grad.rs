//! RoPE of the training forward on the CPU (`Autodiff<Flex>`, f32) as one graph node.
//!
//! RoPE rotates each pair `(x_i, x_{i+hd/2})` of a head by the angle of its row and slot, a
//! linear map `y = R x` with `R` orthogonal, so its backward is the rotation back,
//! `dx = Rᵀ dy`. The node keeps only the `[cos, sin]` tables (shared with the model's), where
//! burn's ops keep both halves of `x` per call and walk strided slices in both passes. Its
//! output is head-major `[B, n, T, hd]`, the layout attention reads, and its input's gradient
//! token-major `[B, T, n, hd]`, the projection's.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::flex_tensor::{flex_values, from_autodiff_flex, to_autodiff_flex};
use crate::rope_rotate::{Direction, rotate};

/// What the backward needs: the input's shape `[B, T, n, hd]` and the tables.
#[derive(Debug, Clone)]
struct Saved {
    dims: [usize; 4],
    tables: Arc<[Vec<f32>; 2]>,
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(parent)] = ops.parents else {
            return;
        };
        let Saved { dims, tables } = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let dy = flex_values(&dy);
        let dx = rotate(&dy, dims, &tables, Direction::BackToTokens);
        grads.register::<Flex>(parent.id, FlexTensor::from_data(TensorData::new(dx, dims)));
    }
}

/// `RoPE(x)` of `x` `[B, T, n, hd]` as one autodiff node, returned `[B, n, T, hd]`, when `B`
/// is `Autodiff<Flex>` with f32 values; `None` otherwise. `tables` are `[B, T, hd/2]`.
pub(crate) fn apply_heads<B: Backend>(
    x: &Tensor<B, 4>,
    tables: &Arc<[Vec<f32>; 2]>,
) -> Option<Tensor<B, 4>> {
    let x_ad = to_autodiff_flex(x.clone())?;
    let dims = x.dims();
    let [rows, len, heads, hd] = dims;
    let y = rotate(
        &flex_values(&x_ad.primitive),
        dims,
        tables,
        Direction::ToHeads,
    );
    let y = FlexTensor::from_data(TensorData::new(y, [rows, heads, len, hd]));
    let node = match RopeBackward
        .prepare::<NoCheckpointing>([x_ad.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                dims,
                tables: Arc::clone(tables),
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_autodiff_flex(node)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use burn::backend::Autodiff;

    // Test only, an arrow back up: the node checked against the tables it serves.
    use crate::rope::RopeTables;

    use super::*;

    type Ad = Autodiff<Flex>;

    #[test]
    fn values_and_gradients_match_burns_rope() {
        let device = Default::default();
        Flex::seed(&device, 9);
        let (rows, len, heads, hd) = (2, 5, 3, 8);
        let inv_freq: Vec<f64> = (0..hd / 2)
            .map(|i| 10_000f64.powf(-(2.0 * i as f64) / hd as f64))
            .collect();
        // Left padding in row 1: its positions start at 0 two slots in.
        let positions = vec![(0..len).collect::<Vec<_>>(), vec![0, 0, 0, 1, 2]];
        let tables = RopeTables::<Ad>::new(&inv_freq, &positions, &device);
        let x = Tensor::<Flex, 4>::random(
            [rows, len, heads, hd],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w = Tensor::<Flex, 4>::random(
            [rows, heads, len, hd],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let run = |fused: bool| {
            let x = Tensor::<Ad, 4>::from_inner(x.clone()).require_grad();
            let y = match fused {
                true => tables.apply_heads(x.clone()),
                false => tables.apply(x.clone().swap_dims(1, 2)),
            };
            let values: Vec<f32> = y.clone().inner().into_data().into_vec().unwrap();
            let grads = (y * Tensor::from_inner(w.clone())).sum().backward();
            let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().into_vec().unwrap();
            (values, dx)
        };
        let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        assert_eq!(y, y_ref, "the forward is the generic path's, bit for bit");
        assert!(
            worst(&dx, &dx_ref) < 1e-6,
            "gradient: {}",
            worst(&dx, &dx_ref)
        );
    }
}
