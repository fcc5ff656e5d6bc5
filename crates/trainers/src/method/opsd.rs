//! OPSD (arXiv 2601.18734): the student's own weights, shown the reference solution, teach
//! the student that answers without it.

use burn::tensor::Tensor;
use opd_divergences::TrainingBackend;
use opd_divergences::{Divergence, DivergenceOptions};
use opd_policy::{Llama, Trainable};
use opd_tasks::Task;
use opd_teachers::{Privileged, TeacherOutput};
use serde::{Deserialize, Serialize};

use super::distill_support;
use super::self_teacher::{SelfTeacher, self_teacher_hooks};
use super::{Forward, LinearIn, Loss, Method, MicroBatch, Parts, Prepared, Rollouts, Targets};
use crate::check::{self, positive};
use crate::error::{Result, TrainError};
use crate::losses::distill;
use crate::settings::{DistillForm, MethodSettings, SamplingConfig, TeacherWeights};
use crate::settings::{teacher_weights, unbiased_sampling};
use opd_divergences::Reduction;

/// OPSD: the frozen initial model reads the problem and its reference solution;
/// `ℓ_t = D(p_T ‖ p_θ)` (the paper's `JSD_0.5`) at every token of one rollout per problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsdConfig {
    /// The divergence `D` of the full form. Default `{ jsd = 0.5 }` (the paper).
    pub divergence: Divergence,
    /// Full-vocabulary divergence or the sampled-token form (a single-sample estimate of the
    /// reverse KL: `divergence` must then be `"reverse_kl"`). Default full.
    pub form: DistillForm,
    /// `min(ℓ_t, clip)`: the later OPSD code's `jsd_token_clip` (0.05); the paper has none.
    /// Default `None`.
    pub token_clip: Option<f64>,
    /// The teacher's weights. Default frozen initial (the paper).
    pub teacher: TeacherWeights,
    /// Temperature of both distributions in the loss. Default 1.
    pub temperature: f64,
    /// Loss aggregation. Default token mean (the OPSD code's).
    pub aggregation: Reduction,
    /// The sampled-token form's baseline. Default the current policy.
    pub baseline: SampledTokenBaseline,
}

impl Default for OpsdConfig {
    fn default() -> Self {
        Self {
            divergence: Divergence::Jsd { beta: 0.5 },
            form: DistillForm::Full,
            token_clip: None,
            teacher: TeacherWeights::FrozenInitial,
            temperature: 1.0,
            aggregation: Reduction::TokenMean,
            baseline: SampledTokenBaseline::Current,
        }
    }
}

/// What the sampled-token form subtracts from the teacher's log-prob of the sampled token:
/// `ℓ_t = −sg(log p_T(ŷ_t) − b_t) · log p_θ(ŷ_t)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampledTokenBaseline {
    /// `b_t = log p_θ(ŷ_t)`, detached: the advantage is the negated per-token reverse KL at
    /// the current weights (the OPSD code's sampled-token path; Tinker's `A_t` when
    /// `θ = θ_old`).
    Current,
    /// `b_t = log π_old(ŷ_t)`, the sampler's: fixed over the step's mini-batches, as Tinker's
    /// and slime's advantage (temperature 1 only: `π_old` is known at τ = 1).
    Old,
}

impl MethodSettings for OpsdConfig {
    fn name(&self) -> &'static str {
        "opsd"
    }

    fn reads_privileged_context(&self) -> bool {
        true
    }

    fn validate(&self, sampling: &SamplingConfig) -> Result<()> {
        check::divergence("objective.divergence", self.divergence)?;
        sampled_token_divergence(self.form, self.divergence)?;
        if let Some(clip) = self.token_clip {
            positive("objective.token_clip", clip)?;
        }
        teacher_weights("objective.teacher", self.teacher)?;
        positive("objective.temperature", self.temperature)?;
        check::aggregation(self.aggregation)?;
        if self.baseline == SampledTokenBaseline::Old && self.temperature != 1.0 {
            return Err(TrainError::Config {
                field: "objective.baseline",
                value: "old".into(),
                expected: "temperature 1 (π_old's log-probs are the sampler's, at τ = 1), or \
                           baseline = \"current\"",
            });
        }
        if self.form == DistillForm::SampledToken {
            unbiased_sampling(sampling)?;
        }
        Ok(())
    }
}

/// The OPSD method.
pub(crate) struct Opsd<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    config: OpsdConfig,
    teacher: SelfTeacher<B, M>,
}

impl<B: TrainingBackend, M: Trainable<B>> Opsd<B, M> {
    pub fn new(config: OpsdConfig, parts: Parts<'_, B, M>) -> Result<Self> {
        let teacher = SelfTeacher::new(config.teacher, parts)?;
        Ok(Self { config, teacher })
    }
}

/// A self-teacher's output and what the loss does with it: OPSD's and SDFT's.
pub(super) struct SelfDistillTargets<B: TrainingBackend> {
    pub teacher: TeacherOutput<B>,
    pub divergence: Divergence,
    pub form: DistillForm,
    pub baseline: SampledTokenBaseline,
    pub token_clip: Option<f64>,
    pub aggregation: Reduction,
}

impl<B: TrainingBackend> Targets<B> for SelfDistillTargets<B> {
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>> {
        let values = match self.form {
            DistillForm::Full => {
                student.divergence(&self.teacher, DivergenceOptions::new(self.divergence))?
            }
            DistillForm::SampledToken => {
                let temperature = self.teacher.temperature();
                let teacher = self.teacher.clone().into_token_log_probs(temperature)?;
                let lp = student.log_probs_at(temperature)?;
                let baseline: Tensor<B, 2> = match self.baseline {
                    SampledTokenBaseline::Current => lp.clone(),
                    SampledTokenBaseline::Old => student.old.clone(),
                };
                distill::sampled_token_against(lp, teacher, baseline)
            }
        };
        let clipped = match self.token_clip {
            Some(clip) => values.clone().clamp_max(clip),
            None => values.clone(),
        };
        let mut loss = Loss::single("distill", clipped);
        loss.divergence = Some(values);
        loss.aggregation = self.aggregation;
        Ok(loss)
    }

    fn teacher(&self) -> Option<&TeacherOutput<B>> {
        Some(&self.teacher)
    }
}

/// The sampled-token form estimates the reverse KL from the sampled token alone: another
/// divergence with it would be ignored, so it is an error naming the field.
pub(super) fn sampled_token_divergence(form: DistillForm, divergence: Divergence) -> Result<()> {
    if form == DistillForm::SampledToken && divergence != Divergence::ReverseKl {
        return Err(TrainError::Config {
            field: "objective.divergence",
            value: format!("{divergence:?}"),
            expected: "\"reverse_kl\" with form = \"sampled_token\" (a single-sample estimate \
                       of the reverse KL), or form = \"full\"",
        });
    }
    Ok(())
}

/// "`name` needs a reference solution or demonstration" when `task` has none.
pub(super) fn needs_reference(name: &str, task: &Task) -> Option<String> {
    task.reference
        .is_none()
        .then(|| format!("{name} needs a reference solution or demonstration"))
}

impl<B: TrainingBackend, M: Trainable<B>> Method<B, M> for Opsd<B, M> {
    fn rollouts(&self) -> Rollouts {
        Rollouts::Sampled { group: 1 }
    }

    fn check_task(&self, task: &Task) -> Option<String> {
        needs_reference("opsd", task)
    }

    fn linear_in(&self) -> Option<(LinearIn, Reduction)> {
        let c = &self.config;
        (c.form == DistillForm::Full && c.token_clip.is_none())
            .then_some((LinearIn::Divergence, c.aggregation))
    }

    fn targets(&self, student: &M, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
        let c = &self.config;
        let reference =
            |i| Privileged::Reference(micro.task(i).reference.clone().unwrap_or_default());
        let support = (distill_support(c.form), c.temperature);
        self.teacher
            .prepare(student, micro, reference, support, |teacher| {
                Ok(SelfDistillTargets {
                    teacher,
                    divergence: c.divergence,
                    form: c.form,
                    baseline: c.baseline,
                    token_clip: c.token_clip,
                    aggregation: c.aggregation,
                })
            })
    }

    self_teacher_hooks!();
}
