//! Where a model lives.

use burn::tensor::backend::AutodiffBackend;
use opd_policy::Llama;

/// The device a model's parameters live on.
pub(crate) fn device_of<B: AutodiffBackend>(model: &Llama<B>) -> B::Device {
    burn::module::Module::devices(model)
        .into_iter()
        .next()
        .unwrap_or_default()
}
