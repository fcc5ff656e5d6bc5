//! The student's own weights as teachers: frozen at the start, or current.

use std::marker::PhantomData;

use burn::tensor::backend::AutodiffBackend;
use opd_policy::{Adapters, Llama, SequenceBatch, Trainable};

use crate::error::Result;
use crate::output::{Request, TeacherOutput};
use crate::teacher::{Teacher, TeacherScores, respond};

/// **Frozen initial** teacher: `θ_T = θ_0`, the student's weights when the teacher was built
/// (OPSD's teacher). Without adapters it keeps a snapshot, which shares storage with the
/// student until the student's first optimizer step and costs one copy of the weights after
/// it. With LoRA the base model is frozen anyway: the teacher is the student with its
/// adapters switched off, and costs nothing.
#[derive(Debug, Clone)]
pub struct FrozenInitial<B: AutodiffBackend, M: Trainable<B> = Llama<B>> {
    snapshot: Option<M::Inner>,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend, M: Trainable<B>> FrozenInitial<B, M> {
    /// The frozen teacher of `student` as it is now.
    pub fn new(student: &M) -> Self {
        Self {
            snapshot: (!student.has_adapters()).then(|| student.valid()),
            backend: PhantomData,
        }
    }

    /// Whether it holds a snapshot (`false`: LoRA adapters off, no copy).
    pub fn is_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The teacher's model for the student as it is now.
    pub fn model(&self, student: &M) -> M::Inner {
        match &self.snapshot {
            Some(model) => model.clone(),
            None => student.valid().with_adapters_enabled(false),
        }
    }
}

impl<B: AutodiffBackend, M: Trainable<B>> Teacher<B, M> for FrozenInitial<B, M> {
    fn outputs(
        &self,
        student: &M,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>> {
        let model = self.model(student);
        respond(batch, request, |rows| TeacherScores::of(&model, rows))
    }
}

/// **Current** teacher: `θ_T = sg(θ)`, the student's weights at every step, stop-gradient.
/// The least stable choice for self-distillation (the target moves with every step); OPSD's
/// code uses it by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Current;

impl<B: AutodiffBackend, M: Trainable<B>> Teacher<B, M> for Current {
    fn outputs(
        &self,
        student: &M,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>> {
        let model = student.valid();
        respond(batch, request, |rows| TeacherScores::of(&model, rows))
    }
}
