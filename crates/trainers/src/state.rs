//! What a trainer is besides its code: the values a checkpoint keeps and puts back.

use burn::optim::Optimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::tensor::backend::AutodiffBackend;
use opd_policy::{FusedAdamW, Llama, Trainable};
use opd_tasks::Task;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

/// Tokens a run has spent since its first step (kept in checkpoints, so a resumed run's
/// budget goes on from where it stopped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensSpent {
    /// Tokens the student sampled in rollouts: `Σ_steps` [`crate::StepMetrics::generated_tokens`].
    pub generated: u64,
    /// Tokens the loss was computed on: `Σ_steps` [`crate::StepMetrics::trained_tokens`].
    pub trained: u64,
}

/// Where a run stands besides its weights and optimizer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunProgress {
    /// Steps taken.
    pub steps_done: usize,
    /// Tasks drawn from the seeded order.
    pub tasks_drawn: usize,
    /// The collapse watch's baseline: the first step's mean response length.
    pub first_response_length: Option<f64>,
    /// Tokens generated and trained on.
    pub tokens_spent: TokensSpent,
}

/// The student's optimizer: AdamW, one pass per parameter on the CPU backend.
pub type StudentOptimizer<B, M = Llama<B>> = OptimizerAdaptor<FusedAdamW, M, B>;

/// AdamW's state for the student's parameters, as burn records it (the same for burn's own
/// `AdamW`, so either's checkpoints load).
/// (the same type for every model: a map from parameter ids).
pub type OptimizerRecord<B> = <StudentOptimizer<B> as Optimizer<Llama<B>, B>>::Record;

/// A trainer's whole state, borrowed: what a checkpoint saves.
pub struct TrainerState<'a, B: AutodiffBackend, M: Trainable<B> = Llama<B>> {
    /// The run's settings.
    pub config: &'a TrainConfig,
    /// The tasks the trainer draws from.
    pub tasks: &'a [Task],
    /// Steps, task order, collapse baseline, tokens.
    pub progress: RunProgress,
    /// The student now.
    pub student: &'a M,
    /// AdamW's moments and step counts.
    pub optimizer: OptimizerRecord<B>,
    /// The weights a teacher moved on its own (an EMA's), when it has them.
    pub teacher: Option<&'a M::Inner>,
}

/// What [`crate::Trainer::restore`] puts back (read from a checkpoint).
pub struct SavedState<B: AutodiffBackend, M: Trainable<B> = Llama<B>> {
    /// Steps, task order, collapse baseline, tokens.
    pub progress: RunProgress,
    /// The student's weights.
    pub student: M,
    /// AdamW's state.
    pub optimizer: OptimizerRecord<B>,
    /// The teacher's own weights, for teachers that have them.
    pub teacher: Option<M::Inner>,
}
