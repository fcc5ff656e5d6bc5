//! The settings the methods share, below every method's config: how the student samples
//! ([`SamplingConfig`]), whose weights a self-teacher uses ([`TeacherWeights`]), the
//! self-distillation loss form ([`DistillForm`]) and what a method's config says about the
//! method ([`MethodSettings`]), with the checks they share.

use serde::{Deserialize, Serialize};

use crate::check::{config_error, unit};
use crate::error::Result;

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

/// A self-teacher's weights: an EMA rate in `(0, 1]`, a trust-region `α` in `[0, 1]`.
pub(crate) fn teacher_weights(field: &'static str, weights: TeacherWeights) -> Result<()> {
    match weights {
        TeacherWeights::Ema(eta) if !(eta > 0.0 && eta <= 1.0) => {
            Err(config_error(field, eta, "an EMA rate η in (0, 1]"))
        }
        TeacherWeights::TrustRegion(alpha) => unit(field, alpha),
        _ => Ok(()),
    }
}

/// Sampling from the policy itself, which sampled-token estimators need.
pub(crate) fn unbiased_sampling(sampling: &SamplingConfig) -> Result<()> {
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
