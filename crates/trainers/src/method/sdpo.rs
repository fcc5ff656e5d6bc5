//! SDPO (arXiv 2601.20802): `G` answers per question; the student's weights, shown the
//! environment's feedback and a successful sibling, teach each answer.

use opd_divergences::TrainingBackend;
use opd_divergences::{Divergence, DivergenceOptions, Support};
use opd_policy::{Llama, Trainable};
use opd_teachers::privileged::sdpo_demonstrations;
use opd_teachers::{Privileged, TeacherOutput, TeacherSupport};
use serde::{Deserialize, Serialize};

use super::advantages::{Advantages, group_relative};
use super::self_teacher::{SelfTeacher, self_teacher_hooks};
use super::{Forward, Loss, Method, MicroBatch, Parts, Prepared, Rollouts};
use super::{SequenceAdvantages, Targets};
use crate::check::{self, at_least, positive, top_k, unit};
use crate::error::Result;
use crate::losses::distill;
use crate::settings::teacher_weights;
use crate::settings::{MethodSettings, SamplingConfig, TeacherWeights};
use opd_divergences::Reduction;

/// SDPO: the teacher reads the environment's feedback and the first successful sibling;
/// `ℓ_t = min(sg ρ_t, is_clip) · D(p_T ‖ p_θ)` (the paper's `JSD_0.5`) on the student's top-k
/// plus a tail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdpoConfig {
    /// Answers per question `G` (≥ 2). Default 8.
    pub group_size: usize,
    /// The teacher's weights. Default EMA with η = 0.05 (the SDPO code).
    pub teacher: TeacherWeights,
    /// The divergence `D`. Default `{ jsd = 0.5 }` (the SDPO code's `α = 0.5`).
    pub divergence: Divergence,
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
    /// The blend's GRPO clip `ε_low`. Default 0.2.
    pub epsilon_low: f64,
    /// The blend's GRPO clip `ε_high`. Default 0.2.
    pub epsilon_high: f64,
    /// Temperature of both distributions in the loss. Default 1.
    pub temperature: f64,
    /// Loss aggregation. Default token mean.
    pub aggregation: Reduction,
}

impl Default for SdpoConfig {
    fn default() -> Self {
        Self {
            group_size: 8,
            teacher: TeacherWeights::Ema(0.05),
            divergence: Divergence::Jsd { beta: 0.5 },
            top_k: Some(100),
            is_clip: 2.0,
            success_reward: 1.0,
            blend_weight: None,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            temperature: 1.0,
            aggregation: Reduction::TokenMean,
        }
    }
}

impl MethodSettings for SdpoConfig {
    fn name(&self) -> &'static str {
        "sdpo"
    }

    fn reads_privileged_context(&self) -> bool {
        true
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
            "at least 2: SDPO's demonstrations are successful siblings",
        )?;
        teacher_weights("objective.teacher", self.teacher)?;
        check::divergence("objective.divergence", self.divergence)?;
        top_k("objective.top_k", self.top_k)?;
        positive("objective.is_clip", self.is_clip)?;
        if let Some(w) = self.blend_weight {
            unit("objective.blend_weight", w)?;
        }
        check::clip(self.epsilon_low, self.epsilon_high)?;
        check::aggregation(self.aggregation)?;
        positive("objective.temperature", self.temperature)
    }
}

/// The SDPO method.
pub(crate) struct Sdpo<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    config: SdpoConfig,
    teacher: SelfTeacher<B, M>,
}

impl<B: TrainingBackend, M: Trainable<B>> Sdpo<B, M> {
    pub fn new(config: SdpoConfig, parts: Parts<'_, B, M>) -> Result<Self> {
        let teacher = SelfTeacher::new(config.teacher, parts)?;
        Ok(Self { config, teacher })
    }
}

struct SdpoTargets<B: TrainingBackend> {
    config: SdpoConfig,
    teacher: TeacherOutput<B>,
    /// The group-relative advantages of the blend's GRPO part.
    advantages: Option<Advantages<B>>,
}

impl<B: TrainingBackend> Targets<B> for SdpoTargets<B> {
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>> {
        let c = &self.config;
        let support = c.top_k.map_or(Support::Full, Support::StudentTopK);
        let options = DivergenceOptions::new(c.divergence).with_support(support);
        let values = student.divergence(&self.teacher, options)?;
        let weight = distill::clipped_importance_weight(
            student.log_probs()?,
            student.old.clone(),
            c.is_clip,
        );
        let distill_loss = values.clone() * weight;
        let mut loss = match (c.blend_weight, &self.advantages) {
            (Some(w), Some(advantages)) => {
                let (pg, clipped) = advantages.clipped(student, c.epsilon_low, c.epsilon_high)?;
                let mut loss = Loss::single("pg", pg.mul_scalar(1.0 - w));
                loss.parts.push(("distill", distill_loss.mul_scalar(w)));
                loss.clipped = Some(clipped);
                loss
            }
            _ => Loss::single("distill", distill_loss),
        };
        loss.divergence = Some(values);
        loss.aggregation = c.aggregation;
        Ok(loss)
    }

    fn teacher(&self) -> Option<&TeacherOutput<B>> {
        Some(&self.teacher)
    }
}

impl<B: TrainingBackend, M: Trainable<B>> Method<B, M> for Sdpo<B, M> {
    fn rollouts(&self) -> Rollouts {
        Rollouts::Sampled {
            group: self.config.group_size,
        }
    }

    fn sequence_advantages(&self, rewards: &[f64]) -> Option<SequenceAdvantages> {
        self.config
            .blend_weight
            .map(|_| group_relative(rewards, self.config.group_size, true))
    }

    fn targets(&self, student: &M, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
        let c = &self.config;
        let rows = micro.rows;
        let rewards: Vec<f64> = rows.outcomes.iter().map(|o| o.reward).collect();
        let demonstrations = sdpo_demonstrations(&rewards, c.group_size, c.success_reward);
        let privileged = |i: usize| {
            let row = micro.chunk[i];
            Privileged::Sdpo {
                demonstration: demonstrations[row].map(|j| rows.texts[j].clone()),
                feedback: rows.outcomes[row].feedback.clone(),
            }
        };
        let support = (TeacherSupport::Logits, c.temperature);
        self.teacher
            .prepare(student, micro, privileged, support, |teacher| {
                Ok(SdpoTargets {
                    config: c.clone(),
                    teacher,
                    advantages: c.blend_weight.map(|_| Advantages::of_rows(micro)),
                })
            })
    }

    self_teacher_hooks!();
}
