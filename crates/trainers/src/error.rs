//! Errors of the training loop.

use thiserror::Error;

/// Result of every fallible trainer operation.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Everything that can stop a training run.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A configuration value is out of range or inconsistent with another.
    #[error("config field `{field}` = {value}: expected {expected}")]
    Config {
        /// The field, as written in a config file (`objective.group_size`).
        field: &'static str,
        /// The value found.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// A task lacks what the objective needs (a reference solution for OPSD, an answer, …).
    #[error("task {index}: {problem}")]
    Task {
        /// Index of the task in the data given to the trainer.
        index: usize,
        /// What is missing or wrong.
        problem: String,
    },
    /// A checkpoint cannot be written or read, or belongs to another run.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The file or folder.
        path: std::path::PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A loss or gradient was NaN or infinite (and the config says to stop).
    #[error("step {step}, micro-batch {micro_batch}: {what} is not finite ({value})")]
    NonFinite {
        /// Optimizer step.
        step: usize,
        /// Micro-batch within the step (for a gradient norm: the last one).
        micro_batch: usize,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The value.
        value: f64,
    },
    /// Every update of several steps in a row was skipped as non-finite
    /// ([`crate::MAX_SKIPPED_STEPS_IN_A_ROW`]): the weights no longer move.
    #[error(
        "the updates of {steps} steps in a row (the last: step {last_step}) were skipped as \
         non-finite ({warning}); the run stops: lower optimizer.learning_rate or \
         optimizer.max_grad_norm, or look for NaN in the data"
    )]
    NonFiniteRun {
        /// Steps in a row with every update skipped.
        steps: usize,
        /// The last of them.
        last_step: usize,
        /// The last skipped update's warning.
        warning: String,
    },
    /// The collapse watch fired and the config says to stop.
    #[error("step {step}: collapse: {reason}")]
    Collapse {
        /// Optimizer step.
        step: usize,
        /// What drifted past its threshold.
        reason: String,
    },
    /// The student has no parameter that requires a gradient (a model rebuilt from its
    /// inner backend with `from_inner`, or every parameter frozen).
    #[error("the student has no trainable parameter: nothing would change")]
    NothingToTrain,
    /// From the model or its batch layout.
    #[error(transparent)]
    Policy(#[from] opd_policy::PolicyError),
    /// From a task's data or its environment.
    #[error(transparent)]
    Tasks(#[from] opd_tasks::TaskError),
    /// From sampling.
    #[error(transparent)]
    Rollout(#[from] opd_rollout::RolloutError),
    /// From a teacher.
    #[error(transparent)]
    Teacher(#[from] opd_teachers::TeacherError),
    /// From the other workers of a data-parallel run.
    #[error(transparent)]
    Parallel(#[from] crate::parallel::ParallelError),
    /// From a divergence.
    #[error(transparent)]
    Divergence(#[from] opd_divergences::DivergenceError),
}
