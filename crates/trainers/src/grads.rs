//! The global gradient norm and clipping to it.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

use crate::parallel::{ParallelError, Replica};

/// `‖g‖₂ = sqrt(Σ_params Σ_i g_i²)` over every gradient of `module` in `grads` (NaN or ∞ if
/// any entry is).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SumOfSquares<'a> {
        grads: &'a GradientsParams,
        total: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumOfSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.total += g.square().sum().into_scalar().elem::<f64>();
            }
        }
    }
    let mut visitor = SumOfSquares { grads, total: 0.0 };
    module.visit(&mut visitor);
    visitor.total.sqrt()
}

/// Multiplies every gradient of `module` by `factor` (clipping: `factor = max_norm / ‖g‖₂`).
pub fn scale<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    module.visit(&mut Scale { grads, factor });
}

/// Every worker's gradients summed, `g = Σ_w g_w`, in buckets of at most [`BUCKET`] values:
/// the parameters that require a gradient are visited in the module's order (the same on
/// every replica: their ids differ), flattened and concatenated; one a worker has no gradient
/// for (it had no tokens) counts as zeros.
pub(crate) fn all_reduce<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    replica: &mut Replica<B::InnerBackend>,
) -> Result<GradientsParams, ParallelError> {
    struct Flatten<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        flat: Vec<Tensor<B::InnerBackend, 1>>,
        device: burn::tensor::Device<B::InnerBackend>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if !value.is_require_grad() {
                return;
            }
            let grad = self
                .grads
                .remove::<B::InnerBackend, D>(param.id)
                .unwrap_or_else(|| Tensor::zeros(value.shape(), &self.device));
            self.flat.push(grad.flatten(0, D - 1));
        }
    }
    struct Unflatten<B: AutodiffBackend> {
        grads: GradientsParams,
        flat: std::vec::IntoIter<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if !value.is_require_grad() {
                return;
            }
            let flat = self
                .flat
                .next()
                .expect("one gradient per trainable parameter");
            self.grads
                .register::<B::InnerBackend, D>(param.id, flat.reshape(value.shape()));
        }
    }
    let mut flatten = Flatten::<B> {
        grads: &mut grads,
        flat: Vec::new(),
        device: replica.device().clone(),
    };
    module.visit(&mut flatten);
    let flat = flatten.flat;
    let mut summed = Vec::with_capacity(flat.len());
    let mut bucket: Vec<Tensor<B::InnerBackend, 1>> = Vec::new();
    let mut size = 0;
    let flush = |bucket: &mut Vec<Tensor<B::InnerBackend, 1>>,
                 summed: &mut Vec<Tensor<B::InnerBackend, 1>>,
                 replica: &mut Replica<B::InnerBackend>|
     -> Result<(), ParallelError> {
        if bucket.is_empty() {
            return Ok(());
        }
        let sizes: Vec<usize> = bucket.iter().map(|t| t.dims()[0]).collect();
        let sum = replica.sum(Tensor::cat(std::mem::take(bucket), 0), "gradients")?;
        summed.extend(sum.split_with_sizes(sizes, 0));
        Ok(())
    };
    for tensor in flat {
        let n = tensor.dims()[0];
        if size + n > BUCKET {
            flush(&mut bucket, &mut summed, replica)?;
            size = 0;
        }
        size += n;
        bucket.push(tensor);
    }
    flush(&mut bucket, &mut summed, replica)?;
    let mut unflatten = Unflatten::<B> {
        grads,
        flat: summed.into_iter(),
    };
    module.visit(&mut unflatten);
    Ok(unflatten.grads)
}

/// Values per all-reduce of gradients (64 MiB of f32).
pub(crate) const BUCKET: usize = 1 << 24;
