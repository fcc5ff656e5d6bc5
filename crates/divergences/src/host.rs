//! Tensors read back to the host.

use burn::tensor::{Tensor, backend::Backend};

/// The values of a float tensor on the host, as `f32` in row-major order (a device read: it
/// waits for the tensor's work).
pub fn host_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("a float tensor converts to f32")
}
