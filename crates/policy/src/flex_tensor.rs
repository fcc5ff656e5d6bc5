//! Tensors of the CPU backend (`flex`) in and out of burn's generic [`Tensor`], for the few
//! kernels that read its storage directly ([`crate::row_matmul`], [`crate::rope`]), and of
//! `Autodiff<Flex>`, for the training forward's graph nodes (`attention_grad`, `rope_grad`,
//! `norm_grad`). Any other backend gets `None` and takes the generic path.

use std::any::Any;
use std::borrow::Cow;

use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorMetadata, TensorPrimitive};

/// The primitive of an `Autodiff<Flex>` float tensor: the inner `FlexTensor` and its node.
pub type AutodiffFlex = FloatTensor<Autodiff<Flex>>;

/// The `flex` tensor under `t`, when `B` is `Flex` and `t` holds unquantized f32 values.
pub fn to_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    into_flex(t).ok().filter(|flex| flex.dtype() == DType::F32)
}

/// A tensor of `B` holding `values` (row-major, `shape`), when `B` is `Flex`.
pub fn from_f32<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
) -> Option<Tensor<B, D>> {
    from_flex(FlexTensor::from_data(TensorData::new(values, shape)))
}

/// The `flex` tensor under `t` whatever its dtype, or `t` back when `B` is another backend.
pub fn into_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>> {
    let primitive = match t.into_primitive() {
        TensorPrimitive::Float(primitive) => primitive,
        quantized => return Err(Tensor::from_primitive(quantized)),
    };
    match (Box::new(primitive) as Box<dyn Any>).downcast::<FlexTensor>() {
        Ok(flex) => Ok(*flex),
        Err(other) => match other.downcast::<B::FloatTensorPrimitive>() {
            Ok(primitive) => Err(Tensor::from_primitive(TensorPrimitive::Float(*primitive))),
            Err(_) => unreachable!("a float primitive is its own type"),
        },
    }
}

/// A tensor of `B` around a `flex` tensor, when `B` is `Flex`.
pub fn from_flex<B: Backend, const D: usize>(flex: FlexTensor) -> Option<Tensor<B, D>> {
    let primitive = *(Box::new(flex) as Box<dyn Any>)
        .downcast::<B::FloatTensorPrimitive>()
        .ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}

/// The autodiff primitive under `t`, when `B` is `Autodiff<Flex>` and `t` holds f32 values.
pub fn to_autodiff_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<AutodiffFlex> {
    autodiff_primitive(t).filter(|ad| ad.primitive.dtype() == DType::F32)
}

/// The autodiff primitive under `t` whatever its dtype, when `B` is `Autodiff<Flex>`.
pub fn autodiff_primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<AutodiffFlex> {
    let TensorPrimitive::Float(primitive) = t.into_primitive() else {
        return None;
    };
    (Box::new(primitive) as Box<dyn Any>)
        .downcast::<AutodiffFlex>()
        .ok()
        .map(|ad| *ad)
}

/// A tensor of `B` around an `Autodiff<Flex>` primitive, when `B` is `Autodiff<Flex>`.
pub fn from_autodiff_flex<B: Backend, const D: usize>(t: AutodiffFlex) -> Option<Tensor<B, D>> {
    let primitive = *(Box::new(t) as Box<dyn Any>)
        .downcast::<FloatTensor<B>>()
        .ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}

/// Whether `t` (on `flex`, with or without autodiff) is a 2-D transposed view of a row-major
/// matrix that it covers: shape `[k, n]`, strides `[1, k]`, `k > 1`.
pub fn is_transposed<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    let flex = to_flex(t.clone()).or_else(|| to_autodiff_flex(t.clone()).map(|ad| ad.primitive));
    flex.is_some_and(|f| is_transposed_view(&f))
}

/// [`is_transposed`] of a `flex` tensor: shape `[k, n]`, strides `[1, k]`, `k > 1` (how
/// checkpoints load weights, the layout the decode kernels read).
pub fn is_transposed_view(t: &FlexTensor) -> bool {
    let shape = t.layout().shape();
    shape.num_dims() == 2 && shape[0] > 1 && t.layout().strides() == [1, shape[0] as isize]
}

/// The values of an f32 flex tensor of any rank, row-major: its storage itself when it is
/// contiguous (no copy), else a contiguous copy.
pub fn flex_values(t: &FlexTensor) -> Cow<'_, [f32]> {
    if let Some(values) = t.as_slice::<f32>() {
        return Cow::Borrowed(values);
    }
    let flat = t
        .clone()
        .reshape(burn::tensor::Shape::new([t.shape().num_elements()]));
    Cow::Owned(
        Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(flat))
            .into_data()
            .into_vec::<f32>()
            .expect("f32 values"),
    )
}
