//! The EMA teacher: a slow average of the student's weights.

use burn::tensor::backend::AutodiffBackend;
use opd_policy::params::{EmaRate, ema_update_trainable};
use opd_policy::{Llama, SequenceBatch, Trainable};

use crate::error::Result;
use crate::output::{Request, TeacherOutput};
use crate::teacher::{Teacher, TeacherScores, respond};

/// **EMA** teacher: starts as the student and after each optimizer step moves
/// `θ_T ← (1 − η)·θ_T + η·θ` (SDPO: η = 0.05). After `k` steps,
/// `θ_T = (1 − η)^k θ_0 + Σ_{j=1..k} η (1 − η)^{k−j} θ_j`.
///
/// Only the student's trainable parameters are averaged; with LoRA those are the adapters
/// `A` and `B`, averaged separately (so the teacher's update is `(ĀB̄)·α/r`, not the average of
/// the products), and the frozen base stays shared with the student.
#[derive(Debug, Clone)]
pub struct Ema<B: AutodiffBackend, M: Trainable<B> = Llama<B>> {
    model: M::Inner,
    rate: EmaRate,
}

impl<B: AutodiffBackend, M: Trainable<B>> Ema<B, M> {
    /// An EMA teacher starting at `student`'s current weights.
    pub fn new(student: &M, rate: EmaRate) -> Self {
        Self {
            model: student.valid(),
            rate,
        }
    }

    /// The teacher's current weights.
    pub fn model(&self) -> &M::Inner {
        &self.model
    }
}

impl<B: AutodiffBackend, M: Trainable<B>> Teacher<B, M> for Ema<B, M> {
    fn outputs(
        &self,
        _student: &M,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>> {
        respond(batch, request, |rows| TeacherScores::of(&self.model, rows))
    }

    fn after_step(&mut self, student: &M) -> Result<()> {
        self.model = ema_update_trainable(self.model.clone(), student, self.rate)?;
        Ok(())
    }

    fn moving_weights(&self) -> Option<&M::Inner> {
        Some(&self.model)
    }

    fn set_moving_weights(&mut self, weights: M::Inner) {
        self.model = weights;
    }
}
