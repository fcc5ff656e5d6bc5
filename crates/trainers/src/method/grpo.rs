//! GRPO (Shao et al. 2024; DAPO's clip-higher and token mean; Dr. GRPO's unscaled advantages
//! and constant normalizer; TRL's `GRPOTrainer` for the defaults).

use burn::tensor::Tensor;
use opd_divergences::TrainingBackend;
use opd_policy::{Llama, Trainable};
use opd_teachers::{FrozenInitial, Teacher, TeacherSupport};
use serde::{Deserialize, Serialize};

use super::advantages::{Advantages, group_relative};
use super::{Forward, Loss, Method, MicroBatch, Prepared, Rollouts, SequenceAdvantages, Targets};
use crate::check::{self, at_least, non_negative};
use crate::error::Result;
use crate::losses::grpo;
use crate::settings::{MethodSettings, SamplingConfig};
use opd_divergences::Reduction;

/// GRPO: `A_i = (r_i − mean_g r) / (std_g r + 1e-4)` (std left out when `scale_rewards` is
/// false), `ℓ_t = −min(ρ_t A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_i) + β · k3_t`,
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
    pub aggregation: Reduction,
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
            aggregation: Reduction::TokenMean,
            kl_beta: 0.0,
        }
    }
}

impl MethodSettings for GrpoConfig {
    fn name(&self) -> &'static str {
        "grpo"
    }

    fn group_size(&self) -> usize {
        self.group_size
    }

    fn uses_rewards(&self) -> bool {
        true
    }

    fn validate(&self, _sampling: &SamplingConfig) -> Result<()> {
        at_least(
            "objective.group_size",
            self.group_size,
            2,
            "at least 2: GRPO's advantage compares answers to the same prompt",
        )?;
        check::clip(self.epsilon_low, self.epsilon_high)?;
        check::aggregation(self.aggregation)?;
        non_negative("objective.kl_beta", self.kl_beta)
    }
}

/// The GRPO method; `reference` is `π_ref` when `kl_beta > 0`.
pub(crate) struct Grpo<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    config: GrpoConfig,
    reference: Option<FrozenInitial<B, M>>,
}

impl<B: TrainingBackend, M: Trainable<B>> Grpo<B, M> {
    pub fn new(config: GrpoConfig, student: &M) -> Self {
        let reference = (config.kl_beta > 0.0).then(|| FrozenInitial::new(student));
        Self { config, reference }
    }
}

struct GrpoTargets<B: TrainingBackend> {
    config: GrpoConfig,
    advantages: Advantages<B>,
    /// `log π_ref(ŷ_t)` when the KL term is on.
    reference: Option<Tensor<B, 2>>,
}

impl<B: TrainingBackend> Targets<B> for GrpoTargets<B> {
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>> {
        let c = &self.config;
        let (pg, clipped) = self
            .advantages
            .clipped(student, c.epsilon_low, c.epsilon_high)?;
        let mut loss = Loss::single("pg", pg);
        loss.aggregation = c.aggregation;
        loss.clipped = Some(clipped);
        if let Some(reference) = &self.reference {
            let kl = grpo::k3_to_reference(student.log_probs()?, reference.clone());
            loss.divergence = Some(kl.clone());
            loss.parts.push(("kl", kl.mul_scalar(c.kl_beta)));
        }
        Ok(loss)
    }
}

impl<B: TrainingBackend, M: Trainable<B>> Method<B, M> for Grpo<B, M> {
    fn rollouts(&self) -> Rollouts {
        Rollouts::Sampled {
            group: self.config.group_size,
        }
    }

    fn sequence_advantages(&self, rewards: &[f64]) -> Option<SequenceAdvantages> {
        Some(group_relative(
            rewards,
            self.config.group_size,
            self.config.scale_rewards,
        ))
    }

    fn targets(&self, student: &M, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
        let reference = match &self.reference {
            Some(reference) => Some(
                reference
                    .outputs(
                        student,
                        micro.batch,
                        &micro.request(TeacherSupport::SampledToken, 1.0)?,
                    )?
                    .into_token_log_probs(1.0)?,
            ),
            None => None,
        };
        let targets = GrpoTargets {
            config: self.config.clone(),
            advantages: Advantages::of_rows(micro),
            reference,
        };
        Ok(Prepared::on_responses(micro, targets))
    }
}
