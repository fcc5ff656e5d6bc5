//! Parameter-level operations teachers need: frozen snapshots and exponential moving averages.
//!
//! Tensors in burn are immutable values, so a snapshot is a clone that shares storage until
//! the student's optimizer replaces its parameters: it costs no copy.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::error::{PolicyError, Result};

/// A copy of `module` whose parameters take no gradient and do not follow later updates.
pub fn frozen<B: Backend, M: Module<B>>(module: &M) -> M {
    module.clone().no_grad()
}

/// Collects every float parameter in visit order: its shape and its values, flattened.
struct Flatten<B: Backend>(Vec<(Vec<usize>, Tensor<B, 1>)>);

impl<B: Backend> ModuleVisitor<B> for Flatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        self.0.push((value.dims().to_vec(), value.reshape([-1])));
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
        let mixed = match self.student.next() {
            Some(student) => {
                let student = student.reshape(teacher.dims());
                teacher.mul_scalar(self.decay) + student.mul_scalar(1.0 - self.decay)
            }
            // Unreachable: `ema_update` checked that the parameters line up.
            None => teacher,
        };
        Param::from_mapped_value(id, mixed.detach(), mapper)
    }
}

/// The exponential moving average step of a teacher:
/// `θ_T ← decay·θ_T + (1 − decay)·θ_S` for every parameter, matched by position in the module.
///
/// Errors when `decay` is not in `[0, 1]` or when the two modules' parameters do not have the
/// same count and shapes (say, a teacher of another architecture); the teacher is then lost,
/// so check with a clone when it must survive.
pub fn ema_update<B: Backend, M: Module<B>>(teacher: M, student: &M, decay: f64) -> Result<M> {
    if !(0.0..=1.0).contains(&decay) {
        return Err(PolicyError::InvalidArgument(format!(
            "EMA decay {decay} is outside [0, 1]"
        )));
    }
    let (mut from_teacher, mut from_student) = (Flatten(Vec::new()), Flatten(Vec::new()));
    teacher.visit(&mut from_teacher);
    student.visit(&mut from_student);
    let (count_t, count_s) = (from_teacher.0.len(), from_student.0.len());
    if count_t != count_s {
        return Err(PolicyError::ParameterMismatch(format!(
            "the teacher has {count_t} parameter tensors, the student {count_s}"
        )));
    }
    let shapes = from_teacher.0.iter().zip(&from_student.0);
    if let Some((index, ((t, _), (s, _)))) = shapes.enumerate().find(|(_, ((t, _), (s, _)))| t != s)
    {
        return Err(PolicyError::ParameterMismatch(format!(
            "parameter {index} has shape {t:?} in the teacher, {s:?} in the student"
        )));
    }
    let student: Vec<_> = from_student
        .0
        .into_iter()
        .map(|(_, values)| values)
        .collect();
    Ok(teacher.map(&mut Average {
        student: student.into_iter(),
        decay,
    }))
}
