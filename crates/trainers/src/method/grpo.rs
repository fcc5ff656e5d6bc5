//! GRPO (Shao et al. 2024; DAPO's clip-higher and token mean; Dr. GRPO's unscaled advantages
//! and constant normalizer; TRL's `GRPOTrainer` for the defaults).

use burn::tensor::Tensor;
use opd_divergences::DivergenceBackend;
use opd_divergences::TrainingBackend;
use opd_policy::Llama;
use opd_teachers::{FrozenInitial, Teacher, TeacherSupport};
use serde::{Deserialize, Serialize};

use super::{
    Clipped, Forward, Loss, Method, MicroBatch, Prepared, Rollouts, SequenceAdvantages, Targets,
};
use crate::check::{at_least, config_error, non_negative, positive};
use crate::error::Result;
use crate::objectives::grpo;
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
        check_clip(self.epsilon_low, self.epsilon_high)?;
        check_aggregation(self.aggregation)?;
        non_negative("objective.kl_beta", self.kl_beta)
    }
}

/// PPO's clip bounds: `ε_low` in `(0, 1)`, `ε_high` above 0.
pub(super) fn check_clip(low: f64, high: f64) -> Result<()> {
    positive("objective.epsilon_low", low)?;
    positive("objective.epsilon_high", high)?;
    if low >= 1.0 {
        return Err(config_error(
            "objective.epsilon_low",
            low,
            "a number in (0, 1)",
        ));
    }
    Ok(())
}

/// A constant normalizer of at least one token.
pub(super) fn check_aggregation(aggregation: Reduction) -> Result<()> {
    match aggregation {
        Reduction::Constant(0) => Err(config_error(
            "objective.aggregation",
            "constant 0",
            "a positive number of tokens per answer",
        )),
        _ => Ok(()),
    }
}

/// The GRPO method; `reference` is `π_ref` when `kl_beta > 0`.
pub(crate) struct Grpo<B: TrainingBackend> {
    config: GrpoConfig,
    reference: Option<FrozenInitial<B>>,
}

impl<B: TrainingBackend> Grpo<B> {
    pub fn new(config: GrpoConfig, student: &Llama<B>) -> Self {
        let reference = (config.kl_beta > 0.0).then(|| FrozenInitial::new(student));
        Self { config, reference }
    }
}

/// Group-normalized advantages on each token, with their host copy for the clip counts.
pub(super) struct Advantages<B: TrainingBackend> {
    pub values: Tensor<B, 2>,
    pub host: Vec<f32>,
}

impl<B: TrainingBackend> Advantages<B> {
    /// Each row's sequence advantage on each of its tokens.
    pub fn of_rows(micro: &MicroBatch<'_, B>) -> Self {
        let (values, host) = micro
            .per_token(|_, row, len| vec![micro.advantages.get(row).copied().unwrap_or(0.0); len]);
        Self { values, host }
    }

    /// PPO's clipped surrogate `−min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A)` per token,
    /// with the tokens where the clip binds counted.
    pub fn clipped(
        &self,
        student: &Forward<B>,
        low: f64,
        high: f64,
    ) -> Result<(Tensor<B, 2>, Clipped)>
    where
        B: DivergenceBackend,
    {
        let lp = student.log_probs()?;
        let mut clipped = Clipped::default();
        let counted = student.counted_host.iter();
        for ((r, a), _) in student
            .ratio_host()?
            .iter()
            .zip(&self.host)
            .zip(counted)
            .filter(|(_, m)| **m)
        {
            let (r, a) = (*r as f64, *a as f64);
            clipped.low += usize::from(r < 1.0 - low && a < 0.0);
            clipped.high += usize::from(r > 1.0 + high && a > 0.0);
            clipped.tokens += 1;
        }
        let loss = grpo::clipped_surrogate(lp, student.old.clone(), self.values.clone(), low, high);
        Ok((loss, clipped))
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

impl<B: TrainingBackend> Method<B> for Grpo<B> {
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

    fn targets(&self, student: &Llama<B>, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
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

/// GRPO's group-normalized advantages of a step.
pub(super) fn group_relative(rewards: &[f64], group: usize, scale: bool) -> SequenceAdvantages {
    let a = grpo::group_advantages(rewards, group, scale);
    SequenceAdvantages {
        values: a.advantages,
        zero_std: Some((a.zero_std_groups, a.groups)),
    }
}
