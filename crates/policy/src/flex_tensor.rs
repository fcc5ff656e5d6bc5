//! Tensors of the CPU backend (`flex`) in and out of burn's generic [`Tensor`], for the few
//! kernels that read its storage directly ([`crate::row_matmul`], [`crate::rope`]). Any other
//! backend, `Autodiff` included, gets `None` and takes the generic path.

use std::any::Any;

use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, TensorData, TensorPrimitive};

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
