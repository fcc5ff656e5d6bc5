//! Where a model lives.

use burn::tensor::backend::AutodiffBackend;

/// The device a model's parameters live on.
pub(crate) fn device_of<B: AutodiffBackend, M: burn::module::Module<B>>(model: &M) -> B::Device {
    burn::module::Module::devices(model)
        .into_iter()
        .next()
        .unwrap_or_default()
}
