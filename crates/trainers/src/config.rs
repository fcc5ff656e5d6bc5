//! Training configuration: serde structs with documented defaults, checked by
//! [`TrainConfig::validate`] with errors that name the field.

use serde::{Deserialize, Serialize};

pub use opd_divergences::Reduction;

use crate::check::{at_least, config_error, positive, unit};
use crate::error::Result;
pub use crate::method::{
    GrpoConfig, OpdConfig, OpdForm, OpsdConfig, SampledTokenBaseline, SdftConfig, SdpoConfig,
    SftConfig, TrustRegionEstimator,
};
pub use crate::objective::Objective;
pub use crate::settings::{DistillForm, MethodSettings, SamplingConfig, TeacherWeights};

/// One training run: the loop's settings and the objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Training steps: rollout batches, each followed by `mini_batches` optimizer steps.
    /// Default 100.
    pub steps: usize,
    /// Distinct prompts per rollout batch (GRPO and SDPO sample `group_size` answers to each).
    /// Default 8.
    pub prompts_per_step: usize,
    /// Rows per forward/backward pass; their gradients are accumulated. Default 4.
    pub micro_batch: usize,
    /// Optimizer steps per rollout batch, each on its own slice of the rows (PPO's mini-batches;
    /// the importance ratio `π_θ/π_old` leaves 1 from the second on). Default 1.
    pub mini_batches: usize,
    /// Seed of the data order and of sampling (step `s` samples with `seed + s`). Default 0.
    pub seed: u64,
    /// AdamW and its schedule.
    pub optimizer: OptimizerConfig,
    /// How the student samples its answers.
    pub sampling: SamplingConfig,
    /// Positions per chunk of the full-vocabulary losses (memory `O(chunk · V)`). Default 32.
    pub chunk_size: usize,
    /// Whether the losses form the student's response logits `[m, R, V]` or take them from
    /// the output head fused with the loss, a block of positions at a time. Default `auto`.
    pub output_head: OutputHead,
    /// Top-k size of the teacher/student overlap diagnostics; 0 turns them off. Default 16.
    pub diagnostics_top_k: usize,
    /// What to do with an update whose loss or gradient is NaN or infinite. Default `skip`.
    pub on_non_finite: OnNonFinite,
    /// Thresholds that flag a collapsing run.
    pub collapse: CollapseWatch,
    /// The method and its settings.
    pub objective: Objective,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            prompts_per_step: 8,
            micro_batch: 4,
            mini_batches: 1,
            seed: 0,
            optimizer: OptimizerConfig::default(),
            sampling: SamplingConfig::default(),
            chunk_size: 32,
            output_head: OutputHead::Auto,
            diagnostics_top_k: 16,
            on_non_finite: OnNonFinite::Skip,
            collapse: CollapseWatch::default(),
            objective: Objective::Sft(SftConfig::default()),
        }
    }
}

/// AdamW (decoupled weight decay) with linear warmup and cosine decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Peak learning rate. Default 1e-5.
    pub learning_rate: f64,
    /// AdamW `β₁`. Default 0.9.
    pub beta1: f64,
    /// AdamW `β₂`. Default 0.999.
    pub beta2: f64,
    /// AdamW `ε`. Default 1e-8.
    pub epsilon: f64,
    /// Decoupled weight decay. Default 0 (TRL's default).
    pub weight_decay: f64,
    /// Steps of linear warmup from 0 to the peak. Default 0.
    pub warmup_steps: usize,
    /// The cosine decays to `min_lr_ratio × learning_rate` at the last step; 1 keeps the rate
    /// constant after warmup. Default 0.1.
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm `‖g‖₂ = sqrt(Σ_params Σ g²)` to this; `None` never clips.
    /// Default 1.0 (TRL, verl).
    pub max_grad_norm: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
            max_grad_norm: Some(1.0),
        }
    }
}

/// How the losses reach the student's logits `z = h·Wᵀ` (final hidden states `h`, head `W`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputHead {
    /// `fused` when the head is frozen (LoRA: no more products than `formed`) or when a
    /// micro-batch's logits would pass 1 GB; `formed` otherwise.
    #[default]
    Auto,
    /// The head fused with every loss: the logits are formed 128 MB at a time in the forward
    /// and the backward, never whole. A head that trains (full fine-tuning of a tied
    /// embedding) forms each block again in the backward, and a teacher given by its hidden
    /// states its block too: less memory, some more time.
    Fused,
    /// The logits `[m, R, V]` formed once per micro-batch, with their gradient.
    Formed,
}

/// What happens to an update whose loss or gradient norm is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Drop the update, report it in the step's metrics and a warning, and go on; after
    /// [`crate::MAX_SKIPPED_STEPS_IN_A_ROW`] steps in a row with every update skipped, stop with
    /// [`crate::TrainError::NonFiniteRun`].
    Skip,
    /// Stop the run with [`crate::TrainError::NonFinite`].
    Stop,
}

/// Thresholds of the collapse watch, checked every step of the sampling methods (SFT, which
/// fits fixed references, is not watched). Each that fires is a warning in the step's metrics; with `stop`, the run ends with [`crate::TrainError::Collapse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollapseWatch {
    /// Fire when the student's mean per-token entropy (nats) falls below this. Default 0.01.
    pub min_entropy: Option<f64>,
    /// Fire when the mean response length leaves `[first / r, first · r]`, `first` being the
    /// first step's. Default 4.
    pub max_length_ratio: Option<f64>,
    /// Stop the run when a threshold fires. Default false.
    pub stop: bool,
}

impl Default for CollapseWatch {
    fn default() -> Self {
        Self {
            min_entropy: Some(0.01),
            max_length_ratio: Some(4.0),
            stop: false,
        }
    }
}

/// The most answers per prompt GRPO and SDPO accept (group sizes in the sources are 4–64).
const MAX_GROUP_SIZE: usize = 1024;

impl TrainConfig {
    /// Checks every field and the combinations the objective needs.
    pub fn validate(&self) -> Result<()> {
        at_least("steps", self.steps, 1, "at least 1")?;
        at_least("prompts_per_step", self.prompts_per_step, 1, "at least 1")?;
        at_least("micro_batch", self.micro_batch, 1, "at least 1")?;
        at_least("mini_batches", self.mini_batches, 1, "at least 1")?;
        at_least("chunk_size", self.chunk_size, 1, "at least 1")?;
        let group = self.objective.group_size();
        if !(1..=MAX_GROUP_SIZE).contains(&group) {
            return Err(config_error(
                "objective.group_size",
                group,
                "2 to 1024 answers per prompt: GRPO and SDPO compare answers to the same prompt",
            ));
        }
        let rows = self.prompts_per_step * group;
        if self.mini_batches > rows {
            return Err(config_error(
                "mini_batches",
                self.mini_batches,
                "at most the rows per step (prompts_per_step × group_size)",
            ));
        }
        let o = &self.optimizer;
        positive("optimizer.learning_rate", o.learning_rate)?;
        if !(0.0..1.0).contains(&o.beta1) {
            return Err(config_error(
                "optimizer.beta1",
                o.beta1,
                "a number in [0, 1)",
            ));
        }
        if !(0.0..1.0).contains(&o.beta2) {
            return Err(config_error(
                "optimizer.beta2",
                o.beta2,
                "a number in [0, 1)",
            ));
        }
        positive("optimizer.epsilon", o.epsilon)?;
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(config_error(
                "optimizer.weight_decay",
                o.weight_decay,
                "a finite number ≥ 0",
            ));
        }
        unit("optimizer.min_lr_ratio", o.min_lr_ratio)?;
        if let Some(norm) = o.max_grad_norm {
            positive("optimizer.max_grad_norm", norm)?;
        }
        let s = &self.sampling;
        positive("sampling.temperature", s.temperature)?;
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(config_error(
                "sampling.top_p",
                s.top_p,
                "a number in (0, 1]",
            ));
        }
        if s.top_k == Some(0) {
            return Err(config_error("sampling.top_k", 0, "at least 1, or absent"));
        }
        at_least("sampling.max_new_tokens", s.max_new_tokens, 1, "at least 1")?;
        if s.stop_strings.iter().any(String::is_empty) {
            return Err(config_error(
                "sampling.stop_strings",
                "\"\"",
                "non-empty strings (an empty one would end every answer before its first token)",
            ));
        }
        if let Some(min) = self.collapse.min_entropy
            && !(min.is_finite() && min >= 0.0)
        {
            return Err(config_error(
                "collapse.min_entropy",
                min,
                "a finite number ≥ 0",
            ));
        }
        if let Some(ratio) = self.collapse.max_length_ratio
            && !(ratio.is_finite() && ratio > 1.0)
        {
            return Err(config_error(
                "collapse.max_length_ratio",
                ratio,
                "a finite number > 1",
            ));
        }
        self.objective.settings().validate(&self.sampling)
    }
}
