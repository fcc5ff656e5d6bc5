//! The product of a linear layer with a frozen bf16 weight ([`crate::frozen`]) on the CPU
//! backend, through [`crate::bf16_products`]:
//!
//! ```text
//! y  = bf16(x)·W             (W stored [out, in], bf16; y, x f32)
//! dx = bf16(dy)·W            (the backward: W has no gradient; dy, dx f32)
//! ```
//!
//! On the training backend (`Autodiff<Flex>`) the product is one graph node whose parent is
//! `x` alone and whose backward is the second line.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, TensorData, TensorMetadata};
use half::bf16;

use crate::bf16_products;
use crate::flex_tensor::{
    autodiff_primitive, flex_values, from_autodiff_flex, from_f32, into_flex, is_transposed_view,
    to_autodiff_flex, to_flex,
};

/// `x·W` when `W` is a bf16 weight on the CPU backend (with or without autodiff) in the layout
/// [`crate::frozen::convert`] makes and `x` is f32; `None` otherwise.
pub(crate) fn try_product<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    if weight.dtype() != DType::BF16 {
        return None;
    }
    plain(x, weight).or_else(|| tracked(x, weight))
}

/// The bf16 buffer `[n, k]` under a transposed-view weight `[k, n]`.
fn rows(weight: &FlexTensor) -> Option<&[bf16]> {
    if weight.dtype() != DType::BF16 || !is_transposed_view(weight) {
        return None;
    }
    let [k, n] = [weight.shape()[0], weight.shape()[1]];
    let start = weight.layout().start_offset();
    weight.storage::<bf16>().get(start..start + n * k)
}

/// On `Flex`: the forward kernel, no graph.
fn plain<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let x_flex = to_flex(x.clone())?;
    let w_flex = into_flex(weight.clone()).ok()?;
    let ([m, k], [_, n]) = (x.dims(), weight.dims());
    let y = bf16_products::forward(&flex_values(&x_flex), m, k, rows(&w_flex)?, n);
    from_f32(y, [m, n])
}

/// What the backward needs: the weight (shared, not copied) and the product's sizes.
#[derive(Debug, Clone)]
struct Saved {
    weight: FlexTensor,
    m: usize,
    n: usize,
    k: usize,
}

#[derive(Debug)]
struct FrozenProductBackward;

impl Backward<Flex, 1> for FrozenProductBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved { weight, m, n, k } = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let w = rows(&weight).expect("the forward checked the weight's layout");
            let dx = bf16_products::backward(&flex_values(&dy), m, n, w, k);
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [m, k])));
        }
    }
}

/// On `Autodiff<Flex>`: the forward kernel as one node with parent `x`.
fn tracked<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let x_ad = to_autodiff_flex(x.clone())?;
    let w_flex = autodiff_primitive(weight.clone())?.primitive;
    let ([m, k], [_, n]) = (x.dims(), weight.dims());
    let y = bf16_products::forward(&flex_values(&x_ad.primitive), m, k, rows(&w_flex)?, n);
    let y = FlexTensor::from_data(TensorData::new(y, [m, n]));
    let node = match FrozenProductBackward
        .prepare::<NoCheckpointing>([x_ad.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                weight: w_flex,
                m,
                n,
                k,
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_autodiff_flex(node)
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;

    use super::*;
    use crate::frozen::{FrozenPrecision, convert};

    type Ad = Autodiff<Flex>;

    /// A `[k, n]` weight as checkpoints load it: the transposed view of `[n, k]`.
    fn weight(k: usize, n: usize) -> Tensor<Flex, 2> {
        Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 0.5), &Default::default())
            .transpose()
    }

    /// The plain and autodiff products, and `dx`, against burn's f32 ops on the bf16-rounded
    /// values (`x` rounded too, as the kernel rounds it).
    #[test]
    fn product_and_gradient_match_f32_ops_on_rounded_values() {
        let (m, k, n) = (6, 64, 40);
        let device = Default::default();
        let w = convert(weight(k, n), FrozenPrecision::Bf16);
        let w_f32 = w.clone().cast(DType::F32);
        let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let x_rounded = x.clone().cast(DType::BF16).cast(DType::F32);
        let close = |got: Tensor<Flex, 2>, want: Tensor<Flex, 2>, what: &str| {
            let (got, want) = (
                got.into_data().to_vec::<f32>().unwrap(),
                want.into_data().to_vec::<f32>().unwrap(),
            );
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{what}: {g} vs {w}"
                );
            }
        };
        close(
            try_product(&x, &w).expect("the bf16 path runs"),
            x_rounded.clone().matmul(w_f32.clone()),
            "y",
        );

        let upstream = Tensor::<Flex, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
        let xa = Tensor::<Ad, 2>::from_inner(x).require_grad();
        let wa = Tensor::<Ad, 2>::from_inner(w);
        let y = try_product(&xa, &wa).expect("the autodiff bf16 path runs");
        close(
            y.clone().inner(),
            x_rounded.matmul(w_f32.clone()),
            "y (autodiff)",
        );
        let grads = (y * Tensor::from_inner(upstream.clone())).sum().backward();
        let dx = xa.grad(&grads).expect("x has a gradient");
        let upstream_rounded = upstream.cast(DType::BF16).cast(DType::F32);
        close(dx, upstream_rounded.matmul(w_f32.transpose()), "dx");
    }

    #[test]
    fn f32_weights_take_the_other_paths() {
        let x = Tensor::<Flex, 2>::random([2, 8], Distribution::Default, &Default::default());
        assert!(try_product(&x, &weight(8, 4)).is_none());
    }
}
