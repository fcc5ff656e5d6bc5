//! Parameter-level operations teachers need: frozen snapshots and exponential moving averages.
//!
//! Tensors in burn are immutable values, so a snapshot is a clone that shares storage until
//! the student's optimizer replaces its parameters: it costs no copy.

use std::any::Any;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::error::{PolicyError, Result};

/// A copy of `module` whose parameters take no gradient and do not follow later updates.
pub fn frozen<B: Backend, M: Module<B>>(module: &M) -> M {
    module.clone().no_grad()
}

/// A tensor of `data` (the logical values) stored in the order of `like`: where `like` is a
/// weight kept as the transposed view of a row-major `[n, k]` matrix (how checkpoints load,
/// what the decode kernels read and [`crate::FusedAdamW`] keeps), one again, so a model
/// restored from saved values computes exactly what the model they were saved from did.
pub fn from_data_like<B: Backend, const D: usize>(
    like: &Tensor<B, D>,
    data: TensorData,
) -> Tensor<B, D> {
    let device = like.device();
    #[cfg(feature = "flex")]
    if crate::flex_tensor::is_transposed(like) && data.shape.as_slice() == like.dims() {
        let [k, n] = [data.shape[0], data.shape[1]];
        if let Ok(values) = data.to_vec::<f32>() {
            // Row `r` of the `[n, k]` matrix is column `r` of the `[k, n]` values.
            let mut rows = vec![0f32; k * n];
            for (c, column) in values.chunks_exact(n).enumerate() {
                for (r, &value) in column.iter().enumerate() {
                    rows[r * k + c] = value;
                }
            }
            return Tensor::from_data(TensorData::new(rows, [n, k]), &device).transpose();
        }
    }
    Tensor::from_data(data, &device)
}

/// The EMA rate `η`: the weight of the **student** in `θ_T ← (1 − η)·θ_T + η·θ_S` (SDPO uses
/// η = 0.05). `η = 0` keeps the teacher, `η = 1` copies the student. There is deliberately no
/// `decay = 1 − η` alongside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmaRate(f64);

impl EmaRate {
    /// The rate `η ∈ [0, 1]`; an error outside it.
    pub fn new(eta: f64) -> Result<Self> {
        if (0.0..=1.0).contains(&eta) {
            Ok(Self(eta))
        } else {
            Err(PolicyError::InvalidArgument(format!(
                "EMA rate η = {eta} is outside [0, 1] (η is the student's weight)"
            )))
        }
    }

    /// `η`.
    pub fn eta(self) -> f64 {
        self.0
    }
}

/// One parameter of the student: its shape and, when it takes part, its tensor (type-erased
/// to keep its rank; never reshaped, so a transposed view is not copied).
type Entry = (Vec<usize>, Option<Box<dyn Any>>);

/// Collects every float parameter of a plain module.
struct Every(Vec<Entry>);

impl<B: Backend> ModuleVisitor<B> for Every {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        self.0.push((value.dims().to_vec(), Some(Box::new(value))));
    }
}

/// Collects the inner tensors of an autodiff module's parameters that require grad.
struct Trainable(Vec<Entry>);

impl<B: AutodiffBackend> ModuleVisitor<B> for Trainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let dims = value.dims().to_vec();
        let inner = value.is_require_grad().then(|| {
            let inner: Box<dyn Any> = Box::new(value.inner());
            inner
        });
        self.0.push((dims, inner));
    }
}

/// Shapes of every float parameter of a module.
struct Shapes(Vec<Vec<usize>>);

impl<B: Backend> ModuleVisitor<B> for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().dims().to_vec());
    }
}

/// Replaces each teacher parameter `θ_T` by `(1 − η)·θ_T + η·θ_S` where the student's entry
/// takes part, and keeps it (shared, not copied) where it does not.
struct Mix {
    student: std::vec::IntoIter<Entry>,
    eta: f64,
}

impl<B: Backend> ModuleMapper<B> for Mix {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let student = self
            .student
            .next()
            .and_then(|(_, s)| s)
            .and_then(|s| s.downcast::<Tensor<B, D>>().ok());
        // `None`: a frozen parameter, or (unreachable) a mismatch the caller already checked.
        let Some(student) = student else {
            return param;
        };
        let (id, teacher, mapper) = param.consume();
        #[cfg(feature = "flex")]
        let teacher = match crate::ema_mix::mix(teacher, &student, self.eta) {
            Ok(mixed) => return Param::from_mapped_value(id, mixed, mapper),
            Err(teacher) => teacher,
        };
        let mixed = teacher.mul_scalar(1.0 - self.eta) + student.mul_scalar(self.eta);
        Param::from_mapped_value(id, mixed.detach(), mapper)
    }
}

/// Checks that the teacher's parameters line up with the student's, then mixes them.
fn mix<B: Backend, M: Module<B>>(teacher: M, student: Vec<Entry>, rate: EmaRate) -> Result<M> {
    let mut shapes = Shapes(Vec::new());
    teacher.visit(&mut shapes);
    let (count_t, count_s) = (shapes.0.len(), student.len());
    if count_t != count_s {
        return Err(PolicyError::ParameterMismatch(format!(
            "the teacher has {count_t} parameter tensors, the student {count_s}"
        )));
    }
    let pairs = shapes.0.iter().zip(&student).enumerate();
    if let Some((index, (t, (s, _)))) = pairs.into_iter().find(|(_, (t, (s, _)))| *t != s) {
        return Err(PolicyError::ParameterMismatch(format!(
            "parameter {index} has shape {t:?} in the teacher, {s:?} in the student"
        )));
    }
    Ok(teacher.map(&mut Mix {
        student: student.into_iter(),
        eta: rate.eta(),
    }))
}

/// The exponential moving average step of a teacher, `θ_T ← (1 − η)·θ_T + η·θ_S` for every
/// parameter, matched by position in the module. Parameters are read in their own layout
/// (no reshape, so no copy of a transposed view). On the CPU backend each parameter is mixed
/// in one pass and keeps the teacher's layout (a transposed-view weight stays one, so the
/// teacher decodes on the fast kernels); elsewhere each mixed parameter costs one temporary.
///
/// Errors when the two modules' parameters do not have the same count and shapes (say, a
/// teacher of another architecture); the teacher is then lost, so check with a clone when it
/// must survive.
pub fn ema_update<B: Backend, M: Module<B>>(teacher: M, student: &M, rate: EmaRate) -> Result<M> {
    let mut every = Every(Vec::new());
    student.visit(&mut every);
    mix(teacher, every.0, rate)
}

/// [`ema_update`] of a no-grad teacher from an autodiff student, on the student's trainable
/// parameters only: those that do not require grad (a LoRA student's frozen base) stay the
/// teacher's own, shared and not recomputed, so an update costs the adapters' size.
pub fn ema_update_trainable<B: AutodiffBackend, M: AutodiffModule<B>>(
    teacher: M::InnerModule,
    student: &M,
    rate: EmaRate,
) -> Result<M::InnerModule> {
    let mut trainable = Trainable(Vec::new());
    student.visit(&mut trainable);
    mix(teacher, trainable.0, rate)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor};

    use super::from_data_like;
    use crate::flex_tensor::is_transposed;

    /// Saved values of a transposed-view weight load as a transposed view with the same
    /// values (with and without autodiff); a contiguous one loads contiguous.
    #[test]
    fn values_load_in_the_layout_of_the_tensor_they_replace() {
        let device = Default::default();
        let rows = Tensor::<Autodiff<Flex>, 2>::random([5, 3], Distribution::Default, &device);
        for like in [rows.clone().transpose(), rows] {
            let loaded = from_data_like(&like, like.to_data());
            assert_eq!(is_transposed(&loaded), is_transposed(&like));
            assert_eq!(loaded.to_data(), like.to_data());
        }
        let plain = Tensor::<Flex, 2>::random([4, 6], Distribution::Default, &device).transpose();
        assert!(is_transposed(&plain));
        assert!(is_transposed(&from_data_like(&plain, plain.to_data())));
    }
}
