//! Training configuration: serde structs with documented defaults, checked by
//! [`TrainConfig::validate`] with errors that name the field.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

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

/// What happens to an update whose loss or gradient norm is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Drop the update, report it in the step's metrics and a warning, and go on; after
    /// [`crate::MAX_SKIPPED_STEPS_IN_A_ROW`] steps in a row with every update skipped, stop with
    /// [`TrainError::NonFiniteRun`].
    Skip,
    /// Stop the run with [`TrainError::NonFinite`].
    Stop,
}

/// Thresholds of the collapse watch, checked every step of the sampling methods (SFT, which
/// fits fixed references, is not watched). Each that fires is a warning in the step's metrics; with `stop`, the run ends with [`TrainError::Collapse`].
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
    /// The method's name as written in configs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sft(_) => "sft",
            Self::Grpo(_) => "grpo",
            Self::Opd(_) => "opd",
            Self::Opsd(_) => "opsd",
            Self::Sdft(_) => "sdft",
            Self::Sdpo(_) => "sdpo",
        }
    }

    /// Answers sampled per prompt.
    pub fn group_size(&self) -> usize {
        match self {
            Self::Grpo(c) => c.group_size,
            Self::Sdpo(c) => c.group_size,
            _ => 1,
        }
    }
}

/// SFT: `L = −(1/N) Σ_{b,t} log p_θ(y*_t | x, y*_<t)` over the reference answer tokens only.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {}

/// How per-token losses become one number (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// `Σ_{b,t} ℓ / Σ_{b,t} 1`: every token weighs the same (DAPO, TRL's default).
    TokenMean,
    /// `mean_b (Σ_t ℓ / |y_b|)`: every answer weighs the same (the original GRPO).
    SequenceMean,
    /// `Σ_{b,t} ℓ / (B · L)` with a constant `L` tokens per answer (Dr. GRPO: no length bias).
    Constant(usize),
}

/// GRPO (Shao et al. 2024; DAPO's clip-higher; Dr. GRPO's unscaled advantages):
/// `A_i = (r_i − mean_g r) / (std_g r + 1e-4)` (std left out when `scale_rewards` is false),
/// `ℓ_t = −min(ρ_t A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_i) + β · k3_t`,
/// `ρ_t = π_θ(ŷ_t)/π_old(ŷ_t)`, `k3_t = e^{q_t} − q_t − 1`, `q_t = log π_ref(ŷ_t) − log π_θ(ŷ_t)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// Answers per prompt `G` (≥ 2). Default 8.
    pub group_size: usize,
    /// Divide by the group's standard deviation (false: Dr. GRPO). Default true.
    pub scale_rewards: bool,
    /// Lower clip `ε_low`. Default 0.2.
    pub epsilon_low: f64,
    /// Upper clip `ε_high` (DAPO's clip-higher uses 0.28). Default 0.2.
    pub epsilon_high: f64,
    /// Loss aggregation. Default token mean.
    pub aggregation: Aggregation,
    /// Weight `β` of the k3 KL to the initial policy; 0 skips the reference forward. Default 0
    /// (TRL's default).
    pub kl_beta: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            group_size: 8,
            scale_rewards: true,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            aggregation: Aggregation::TokenMean,
            kl_beta: 0.0,
        }
    }
}

/// Which form of on-policy distillation to minimize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpdForm {
    /// The objective of "How to Use Privileged Information in RL":
    /// `ℓ_t = ρ_t (log π_θ(ŷ_t) − log π_T(ŷ_t)) + β_tr KL(π_old ‖ π_θ)_t`, the KL estimated by
    /// `k3 = ρ_t − 1 − log ρ_t` at the sampled token.
    Surrogate,
    /// The per-token advantage form (Tinker, slime): `A_t = Σ_{s≥t} γ^{s−t}(log p_T(ŷ_s) −
    /// log p_old(ŷ_s))` (detached), plus `reward_weight ×` the group-normalized task reward,
    /// trained with the importance-sampled loss `ℓ_t = −ρ_t A_t`.
    Advantage,
    /// A divergence over the full vocabulary or the teacher's top-k plus a tail:
    /// `ℓ_t = JSD_β(p_T ‖ p_θ)` (β = 1: reverse KL).
    Divergence,
}

/// On-policy distillation from a teacher model that shares the student's vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpdConfig {
    /// The form of the loss. Default the surrogate.
    pub form: OpdForm,
    /// `β_tr`, the weight of the forward-KL trust region to `π_old` (surrogate form; its
    /// gradient is zero while `π_θ = π_old`, so it acts from the second mini-batch). Default 0.1.
    pub trust_region_beta: f64,
    /// `γ`, the discount over later tokens (advantage form); 0 keeps each token's own term
    /// (Tinker's default). Default 0.
    pub discount: f64,
    /// Weight of the group-normalized task reward added to each token's advantage
    /// (advantage form). Default 0.
    pub reward_weight: f64,
    /// `β` of the divergence form's JSD (1 = reverse KL, 0 = forward KL). Default 1.
    pub divergence_beta: f64,
    /// Divergence form on the teacher's top-k plus a tail bucket; `None` uses the full
    /// vocabulary. Default `None`.
    pub teacher_top_k: Option<usize>,
}

impl Default for OpdConfig {
    fn default() -> Self {
        Self {
            form: OpdForm::Surrogate,
            trust_region_beta: 0.1,
            discount: 0.0,
            reward_weight: 0.0,
            divergence_beta: 1.0,
            teacher_top_k: None,
        }
    }
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

/// OPSD (arXiv 2601.18734): the frozen initial model reads the problem and its reference
/// solution; `ℓ_t = JSD_β(p_T ‖ p_θ)` at every token of one rollout per problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsdConfig {
    /// The JSD's `β` (0 = forward KL, 1 = reverse KL). Default 0.5 (the paper).
    pub beta: f64,
    /// Full-vocabulary divergence or the sampled-token form. Default full.
    pub form: DistillForm,
    /// `min(ℓ_t, clip)`: the later OPSD code's `jsd_token_clip` (0.05); the paper has none.
    /// Default `None`.
    pub token_clip: Option<f64>,
    /// The teacher's weights. Default frozen initial (the paper).
    pub teacher: TeacherWeights,
    /// Temperature of both distributions in the loss. Default 1.
    pub temperature: f64,
}

impl Default for OpsdConfig {
    fn default() -> Self {
        Self {
            beta: 0.5,
            form: DistillForm::Full,
            token_clip: None,
            teacher: TeacherWeights::FrozenInitial,
            temperature: 1.0,
        }
    }
}

/// SDFT (arXiv 2601.19897): a demonstration in the teacher's context,
/// `ℓ_t = KL(p_θ ‖ p_T)` (reverse KL) at every token of the student's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdftConfig {
    /// The teacher's weights. Default EMA with η = 0.05.
    pub teacher: TeacherWeights,
    /// Full-vocabulary reverse KL or the sampled-token form. Default full.
    pub form: DistillForm,
    /// Temperature of both distributions in the loss. Default 1.
    pub temperature: f64,
}

impl Default for SdftConfig {
    fn default() -> Self {
        Self {
            teacher: TeacherWeights::Ema(0.05),
            form: DistillForm::Full,
            temperature: 1.0,
        }
    }
}

/// SDPO (arXiv 2601.20802): `G` answers per question; the teacher reads the environment's
/// feedback and the first successful sibling;
/// `ℓ_t = min(sg ρ_t, is_clip) · JSD_α(p_T ‖ p_θ)` on the student's top-k plus a tail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdpoConfig {
    /// Answers per question `G` (≥ 2). Default 8.
    pub group_size: usize,
    /// The teacher's weights. Default EMA with η = 0.05 (the SDPO code).
    pub teacher: TeacherWeights,
    /// The JSD's `α` (0 = forward KL, 1 = reverse KL). Default 0.5.
    pub alpha: f64,
    /// Support: the student's `k` most likely tokens plus a tail; `None` is the full
    /// vocabulary. Default 100.
    pub top_k: Option<usize>,
    /// Cap of the detached importance weight `π_θ/π_old`. Default 2.
    pub is_clip: f64,
    /// Reward at or above which a sibling counts as a successful demonstration. Default 1.
    pub success_reward: f64,
    /// `None`: the distillation loss replaces the policy gradient (the SDPO code). `Some(w)`:
    /// `(1 − w) · GRPO + w · distillation` (TRL). Default `None`.
    pub blend_weight: Option<f64>,
    /// Temperature of both distributions in the loss. Default 1.
    pub temperature: f64,
}

impl Default for SdpoConfig {
    fn default() -> Self {
        Self {
            group_size: 8,
            teacher: TeacherWeights::Ema(0.05),
            alpha: 0.5,
            top_k: Some(100),
            is_clip: 2.0,
            success_reward: 1.0,
            blend_weight: None,
            temperature: 1.0,
        }
    }
}

fn config_error(field: &'static str, value: impl ToString, expected: &'static str) -> TrainError {
    TrainError::Config {
        field,
        value: value.to_string(),
        expected,
    }
}

fn positive(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(config_error(field, value, "a finite number > 0"))
    }
}

fn unit(field: &'static str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(config_error(field, value, "a number in [0, 1]"))
    }
}

/// The most answers per prompt GRPO and SDPO accept (group sizes in the sources are 4–64).
const MAX_GROUP_SIZE: usize = 1024;

fn at_least(field: &'static str, value: usize, min: usize, expected: &'static str) -> Result<()> {
    if value >= min {
        Ok(())
    } else {
        Err(config_error(field, value, expected))
    }
}

fn teacher_weights(field: &'static str, weights: TeacherWeights) -> Result<()> {
    match weights {
        TeacherWeights::Ema(eta) if !(eta > 0.0 && eta <= 1.0) => {
            Err(config_error(field, eta, "an EMA rate η in (0, 1]"))
        }
        TeacherWeights::TrustRegion(alpha) => unit(field, alpha),
        _ => Ok(()),
    }
}

fn unbiased_sampling(sampling: &SamplingConfig) -> Result<()> {
    if sampling.is_unbiased() {
        return Ok(());
    }
    let (field, value) = if sampling.top_p != 1.0 {
        ("sampling.top_p", sampling.top_p.to_string())
    } else if let Some(k) = sampling.top_k {
        ("sampling.top_k", k.to_string())
    } else {
        ("sampling.temperature", sampling.temperature.to_string())
    };
    Err(config_error(
        field,
        value,
        "samples from the policy itself (temperature 1, top_p 1, no top_k): a sampled-token \
         estimator is biased otherwise",
    ))
}

impl TrainConfig {
    /// Checks every field and the combinations the objective needs.
    pub fn validate(&self) -> Result<()> {
        at_least("steps", self.steps, 1, "at least 1")?;
        at_least("prompts_per_step", self.prompts_per_step, 1, "at least 1")?;
        at_least("micro_batch", self.micro_batch, 1, "at least 1")?;
        at_least("mini_batches", self.mini_batches, 1, "at least 1")?;
        at_least("chunk_size", self.chunk_size, 1, "at least 1")?;
        if matches!(self.objective, Objective::Grpo(_) | Objective::Sdpo(_)) {
            let group = self.objective.group_size();
            if !(2..=MAX_GROUP_SIZE).contains(&group) {
                return Err(config_error(
                    "objective.group_size",
                    group,
                    "2 to 1024 answers per prompt: GRPO and SDPO compare answers to the same prompt",
                ));
            }
        }
        let rows = self.prompts_per_step * self.objective.group_size();
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
        self.validate_objective()
    }

    fn validate_objective(&self) -> Result<()> {
        match &self.objective {
            Objective::Sft(_) => Ok(()),
            Objective::Grpo(c) => {
                at_least(
                    "objective.group_size",
                    c.group_size,
                    2,
                    "at least 2: GRPO's advantage compares answers to the same prompt",
                )?;
                positive("objective.epsilon_low", c.epsilon_low)?;
                positive("objective.epsilon_high", c.epsilon_high)?;
                if c.epsilon_low >= 1.0 {
                    return Err(config_error(
                        "objective.epsilon_low",
                        c.epsilon_low,
                        "a number in (0, 1)",
                    ));
                }
                if let Aggregation::Constant(0) = c.aggregation {
                    return Err(config_error(
                        "objective.aggregation",
                        "constant 0",
                        "a positive number of tokens per answer",
                    ));
                }
                if !(c.kl_beta.is_finite() && c.kl_beta >= 0.0) {
                    return Err(config_error(
                        "objective.kl_beta",
                        c.kl_beta,
                        "a finite number ≥ 0",
                    ));
                }
                Ok(())
            }
            Objective::Opd(c) => {
                if !(c.trust_region_beta.is_finite() && c.trust_region_beta >= 0.0) {
                    return Err(config_error(
                        "objective.trust_region_beta",
                        c.trust_region_beta,
                        "a finite number ≥ 0",
                    ));
                }
                unit("objective.discount", c.discount)?;
                unit("objective.divergence_beta", c.divergence_beta)?;
                if !c.reward_weight.is_finite() {
                    return Err(config_error(
                        "objective.reward_weight",
                        c.reward_weight,
                        "a finite number",
                    ));
                }
                if c.teacher_top_k == Some(0) {
                    return Err(config_error(
                        "objective.teacher_top_k",
                        0,
                        "at least 1, or absent",
                    ));
                }
                match c.form {
                    OpdForm::Divergence => Ok(()),
                    _ => unbiased_sampling(&self.sampling),
                }
            }
            Objective::Opsd(c) => {
                unit("objective.beta", c.beta)?;
                if let Some(clip) = c.token_clip {
                    positive("objective.token_clip", clip)?;
                }
                teacher_weights("objective.teacher", c.teacher)?;
                positive("objective.temperature", c.temperature)?;
                if c.form == DistillForm::SampledToken {
                    unbiased_sampling(&self.sampling)?;
                }
                Ok(())
            }
            Objective::Sdft(c) => {
                teacher_weights("objective.teacher", c.teacher)?;
                positive("objective.temperature", c.temperature)?;
                if c.form == DistillForm::SampledToken {
                    unbiased_sampling(&self.sampling)?;
                }
                Ok(())
            }
            Objective::Sdpo(c) => {
                at_least(
                    "objective.group_size",
                    c.group_size,
                    2,
                    "at least 2: SDPO's demonstrations are successful siblings",
                )?;
                teacher_weights("objective.teacher", c.teacher)?;
                unit("objective.alpha", c.alpha)?;
                if c.top_k == Some(0) {
                    return Err(config_error("objective.top_k", 0, "at least 1, or absent"));
                }
                positive("objective.is_clip", c.is_clip)?;
                if let Some(w) = c.blend_weight {
                    unit("objective.blend_weight", w)?;
                }
                positive("objective.temperature", c.temperature)
            }
        }
    }
}
