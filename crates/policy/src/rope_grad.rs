//! RoPE of the training forward on the CPU (`Autodiff<Flex>`, f32) as one graph node.
//!
//! RoPE rotates each pair `(x_i, x_{i+hd/2})` of a head by the angle of its row and slot, a
//! linear map `y = R x` with `R` orthogonal, so its backward is the rotation back,
//! `dx = Rᵀ dy`. The node keeps only the `[cos, sin]` tables (shared with the model's), where
//! burn's ops keep both halves of `x` per call and walk strided slices in both passes. Its
//! output is head-major `[B, n, T, hd]`, the layout attention reads, and its input's gradient
//! token-major `[B, T, n, hd]`, the projection's.

use std::any::Any;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorPrimitive};

use crate::rope::{Direction, rotate};

type Ad = Autodiff<Flex>;

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
        let grad = grads.consume::<Flex>(&ops.node);
        let dy = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(grad))
            .into_data()
            .into_vec::<f32>()
            .expect("f32 gradient");
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
    let TensorPrimitive::Float(primitive) = x.clone().into_primitive() else {
        return None;
    };
    let x_ad = *(Box::new(primitive) as Box<dyn Any>)
        .downcast::<FloatTensor<Ad>>()
        .ok()?;
    if x_ad.primitive.dtype() != DType::F32 {
        return None;
    }
    let dims = x.dims();
    let [rows, len, heads, hd] = dims;
    let values = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(x_ad.primitive.clone()))
        .into_data()
        .into_vec::<f32>()
        .ok()?;
    let y = rotate(&values, dims, tables, Direction::ToHeads);
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
    let primitive = *(Box::new(node) as Box<dyn Any>)
        .downcast::<FloatTensor<B>>()
        .ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use crate::rope::RopeTables;

    use super::*;

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
