//! The self-teacher of OPSD, SDFT and SDPO: the student's weights (frozen, current, EMA or
//! trust region) reading the question with privileged information.

use opd_divergences::TrainingBackend;
use opd_policy::{Llama, Trainable};
use opd_teachers::{
    Conditioned, Current, Ema, EmaRate, FrozenInitial, Privileged, Teacher, TeacherOutput,
    TeacherSupport, TrustRegion,
};

use super::{MicroBatch, Parts, Prepared, Targets};
use crate::error::Result;
use crate::settings::TeacherWeights;

/// A prompt-conditioned teacher built from the student.
pub(super) struct SelfTeacher<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    conditioned: Conditioned<Box<dyn Teacher<B, M>>>,
}

impl<B: TrainingBackend, M: Trainable<B>> SelfTeacher<B, M> {
    /// The self-teacher `weights` name, or the teacher `parts` give in its place.
    pub fn new(weights: TeacherWeights, parts: Parts<'_, B, M>) -> Result<Self> {
        let mut given = parts.teachers.into_iter();
        let teacher = match (given.next(), given.next()) {
            (Some((_, teacher)), None) => teacher,
            (None, _) => strategy(weights, parts.student)?,
            (Some(_), Some(_)) => {
                return Err(crate::error::TrainError::Config {
                    field: "teacher",
                    value: "several teachers".into(),
                    expected: "at most one model in place of a self-teacher",
                });
            }
        };
        Ok(Self {
            conditioned: Conditioned {
                teacher,
                template: parts.template,
                tokenizer: parts.tokenizer.clone(),
            },
        })
    }

    /// The teacher's outputs for `micro`, row `i` reading `privileged(i)`, and the loss mask
    /// without the rows that had nothing privileged to show; `targets` builds the targets
    /// from the output.
    pub fn prepare<T: Targets<B> + 'static>(
        &self,
        student: &M,
        micro: &MicroBatch<'_, B>,
        privileged: impl Fn(usize) -> Privileged,
        (support, temperature): (TeacherSupport, f64),
        targets: impl FnOnce(TeacherOutput<B>) -> Result<T>,
    ) -> Result<Prepared<B>> {
        let questions: Vec<&str> = (0..micro.chunk.len())
            .map(|i| micro.task(i).prompt.as_str())
            .collect();
        let privileged: Vec<Privileged> = (0..micro.chunk.len()).map(privileged).collect();
        let out = self.conditioned.outputs(
            student,
            micro.batch,
            &questions,
            &privileged,
            &micro.request(support, temperature)?,
        )?;
        Ok(Prepared {
            loss_mask: out.mask,
            rows_without_privilege: out.rows_without_privilege,
            targets: Box::new(targets(out.output)?),
        })
    }

    /// After an optimizer step: the EMA moves.
    pub fn after_update(&mut self, student: &M) -> Result<()> {
        Ok(self.conditioned.teacher.after_step(student)?)
    }

    /// The EMA's weights.
    pub fn weights(&self) -> Option<&M::Inner> {
        self.conditioned.teacher.moving_weights()
    }

    /// Puts back the EMA's weights.
    pub fn set_weights(&mut self, weights: M::Inner) {
        self.conditioned.teacher.set_moving_weights(weights);
    }
}

/// The teacher strategy `weights` names, built from the student at step 0.
fn strategy<B: TrainingBackend, M: Trainable<B>>(
    weights: TeacherWeights,
    student: &M,
) -> Result<Box<dyn Teacher<B, M>>> {
    Ok(match weights {
        TeacherWeights::FrozenInitial => Box::new(FrozenInitial::new(student)),
        TeacherWeights::Current => Box::new(Current),
        TeacherWeights::Ema(eta) => Box::new(Ema::new(student, EmaRate::new(eta)?)),
        TeacherWeights::TrustRegion(alpha) => Box::new(TrustRegion::new(student, alpha)?),
    })
}

/// Forwards [`super::Method`]'s teacher hooks to a `SelfTeacher` field named `teacher`.
macro_rules! self_teacher_hooks {
    () => {
        fn after_update(&mut self, student: &M) -> crate::error::Result<()> {
            self.teacher.after_update(student)
        }

        fn teacher_weights(&self) -> Option<&M::Inner> {
            self.teacher.weights()
        }

        fn set_teacher_weights(&mut self, weights: M::Inner) {
            self.teacher.set_weights(weights)
        }
    };
}
pub(super) use self_teacher_hooks;
