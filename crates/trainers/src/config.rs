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

/// The student's sampling settings during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Softmax temperature. Default 1 (samples from the policy itself).
    pub temperature: f64,
    /// Nucleus mass. Default 1 (off).
    pub top_p: f64,
    /// Keep only the `k` most likely tokens. Default off.
    pub top_k: Option<usize>,
    /// Longest answer. Default 256.
    pub max_new_tokens: usize,
    /// Strings that end an answer (the answer keeps the tokens before them).
    pub stop_strings: Vec<String>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            max_new_tokens: 256,
            stop_strings: Vec::new(),
        }
    }
}

impl SamplingConfig {
    /// Whether answers come from `p_S` itself (τ = 1, no truncation): the condition under
    /// which sampled-token estimators and importance ratios against τ = 1 log-probs are exact.
    pub fn is_unbiased(&self) -> bool {
        self.temperature == 1.0 && self.top_p == 1.0 && self.top_k.is_none()
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

/// The training objective, tagged by `method` in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Objective {
    /// Supervised fine-tuning on the tasks' reference answers.
    Sft(SftConfig),
    /// Group-relative policy optimization on the environment's rewards.
    Grpo(GrpoConfig),
    /// On-policy distillation from a teacher model.
    Opd(OpdConfig),
    /// On-policy self-distillation with the reference solution in the teacher's context.
    Opsd(OpsdConfig),
    /// Self-distillation fine-tuning with a demonstration in the teacher's context.
    Sdft(SdftConfig),
    /// Self-distillation policy optimization with the environment's feedback.
    Sdpo(SdpoConfig),
}

impl Objective {
    /// The method's settings behind one interface (the config side's one match).
    pub fn settings(&self) -> &dyn MethodSettings {
        match self {
            Self::Sft(c) => c,
            Self::Grpo(c) => c,
            Self::Opd(c) => c,
            Self::Opsd(c) => c,
            Self::Sdft(c) => c,
            Self::Sdpo(c) => c,
        }
    }

    /// The method's name as written in configs and metrics.
    pub fn name(&self) -> &'static str {
        self.settings().name()
    }

    /// Answers sampled per prompt.
    pub fn group_size(&self) -> usize {
        self.settings().group_size()
    }
}

/// What a method's config says about the method, each implemented in the method's file.
pub trait MethodSettings {
    /// The name as written in configs (`method = "…"`) and metrics.
    fn name(&self) -> &'static str;

    /// Answers sampled per prompt `G`. Default 1.
    fn group_size(&self) -> usize {
        1
    }

    /// Whether the student samples its answers (false for SFT, trained on references: the
    /// token budget then counts the references' tokens).
    fn samples(&self) -> bool {
        true
    }

    /// Whether the loss reads the environment's rewards (the tasks must then be gradable).
    fn uses_rewards(&self) -> bool {
        false
    }

    /// Whether the method needs a teacher model besides the student (OPD).
    fn needs_teacher_model(&self) -> bool {
        false
    }

    /// Whether a teacher model, when given, reads the privileged context in place of the
    /// self-teacher (OPSD, SDFT, SDPO: `[teacher]` in a run file). Default false.
    fn reads_privileged_context(&self) -> bool {
        false
    }

    /// Checks the settings, and the sampling they need; errors name the field.
    fn validate(&self, sampling: &SamplingConfig) -> Result<()>;
}

/// Whose weights a self-teacher uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherWeights {
    /// The student at step 0 (with LoRA: adapters off).
    FrozenInitial,
    /// The student now, stop-gradient.
    Current,
    /// `θ_T ← (1 − η) θ_T + η θ` after every step, with this `η`.
    Ema(f64),
    /// Logits `z_0 + α (z_θ − z_0)` with this `α`.
    TrustRegion(f64),
}

/// The distillation loss at each token of a self-distillation objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistillForm {
    /// A divergence over the full vocabulary (or a top-k support).
    Full,
    /// The sampled-token form `ℓ_t = −sg(log p_T(ŷ_t) − log p_θ(ŷ_t)) · log p_θ(ŷ_t)`.
    SampledToken,
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
