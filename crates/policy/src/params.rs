//! Parameter-level operations teachers need: frozen snapshots and exponential moving averages.
//!
//! Tensors in burn are immutable values, so a snapshot is a clone that shares storage until
//! the student's optimizer replaces its parameters: it costs no copy.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::Backend};

/// A copy of `module` whose parameters take no gradient and do not follow later updates.
pub fn frozen<B: Backend, M: Module<B>>(module: &M) -> M {
    module.clone().no_grad()
}

/// Collects every float parameter, flattened, in visit order.
struct Flatten<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Flatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().reshape([-1]));
    }
}

/// Replaces each parameter `θ_T` by `decay·θ_T + (1 − decay)·θ_S`.
struct Average<B: Backend> {
    student: std::vec::IntoIter<Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for Average<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, teacher, mapper) = param.consume();
        let student = self
            .student
            .next()
            .expect("teacher and student have the same parameters")
            .reshape(teacher.dims());
        let mixed = teacher.mul_scalar(self.decay) + student.mul_scalar(1.0 - self.decay);
        Param::from_mapped_value(id, mixed.detach(), mapper)
    }
}

/// The exponential moving average step of a teacher:
/// `θ_T ← decay·θ_T + (1 − decay)·θ_S` for every parameter, matched by position in the module.
///
/// # Panics
/// When the two modules do not have the same parameter shapes.
pub fn ema_update<B: Backend, M: Module<B>>(teacher: M, student: &M, decay: f64) -> M {
    let mut flat = Flatten(Vec::new());
    student.visit(&mut flat);
    teacher.map(&mut Average {
        student: flat.0.into_iter(),
        decay,
    })
}
