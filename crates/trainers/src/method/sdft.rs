//! SDFT (arXiv 2601.19897): the student's weights, shown a demonstration, teach the student
//! with the reverse KL (or another divergence) at every token of its own answer.

use opd_divergences::Divergence;
use opd_divergences::TrainingBackend;
use opd_policy::{Llama, Trainable};
use opd_tasks::Task;
use opd_teachers::Privileged;
use serde::{Deserialize, Serialize};

use super::distill_support;
use super::opsd::sampled_token_divergence;
use super::opsd::{SampledTokenBaseline, SelfDistillTargets, needs_reference};
use super::self_teacher::{SelfTeacher, self_teacher_hooks};
use super::{LinearIn, Method, MicroBatch, Parts, Prepared, Rollouts};
use crate::check::{self, positive};
use crate::error::Result;
use crate::settings::{DistillForm, MethodSettings, SamplingConfig, TeacherWeights};
use crate::settings::{teacher_weights, unbiased_sampling};
use opd_divergences::Reduction;

/// SDFT: a demonstration in the teacher's context, `ℓ_t = D(p_T ‖ p_θ)` (the paper's reverse
/// KL `KL(p_θ ‖ p_T)`) at every token of the student's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdftConfig {
    /// The teacher's weights. Default EMA with η = 0.05.
    pub teacher: TeacherWeights,
    /// The divergence `D` of the full form. Default `"reverse_kl"` (the paper).
    pub divergence: Divergence,
    /// Full-vocabulary divergence or the sampled-token form (a single-sample estimate of the
    /// reverse KL). Default full.
    pub form: DistillForm,
    /// Temperature of both distributions in the loss. Default 1.
    pub temperature: f64,
    /// Loss aggregation. Default token mean.
    pub aggregation: Reduction,
}

impl Default for SdftConfig {
    fn default() -> Self {
        Self {
            teacher: TeacherWeights::Ema(0.05),
            divergence: Divergence::ReverseKl,
            form: DistillForm::Full,
            temperature: 1.0,
            aggregation: Reduction::TokenMean,
        }
    }
}

impl MethodSettings for SdftConfig {
    fn name(&self) -> &'static str {
        "sdft"
    }

    fn reads_privileged_context(&self) -> bool {
        true
    }

    fn validate(&self, sampling: &SamplingConfig) -> Result<()> {
        teacher_weights("objective.teacher", self.teacher)?;
        check::divergence("objective.divergence", self.divergence)?;
        sampled_token_divergence(self.form, self.divergence)?;
        positive("objective.temperature", self.temperature)?;
        check::aggregation(self.aggregation)?;
        if self.form == DistillForm::SampledToken {
            unbiased_sampling(sampling)?;
        }
        Ok(())
    }
}

/// The SDFT method.
pub(crate) struct Sdft<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    config: SdftConfig,
    teacher: SelfTeacher<B, M>,
}

impl<B: TrainingBackend, M: Trainable<B>> Sdft<B, M> {
    pub fn new(config: SdftConfig, parts: Parts<'_, B, M>) -> Result<Self> {
        let teacher = SelfTeacher::new(config.teacher, parts)?;
        Ok(Self { config, teacher })
    }
}

impl<B: TrainingBackend, M: Trainable<B>> Method<B, M> for Sdft<B, M> {
    fn rollouts(&self) -> Rollouts {
        Rollouts::Sampled { group: 1 }
    }

    fn check_task(&self, task: &Task) -> Option<String> {
        needs_reference("sdft", task)
    }

    fn linear_in(&self) -> Option<(LinearIn, Reduction)> {
        let c = &self.config;
        (c.form == DistillForm::Full).then_some((LinearIn::Divergence, c.aggregation))
    }

    fn targets(&self, student: &M, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
        let c = &self.config;
        let demonstration =
            |i| Privileged::Demonstration(micro.task(i).reference.clone().unwrap_or_default());
        let support = (distill_support(c.form), c.temperature);
        self.teacher
            .prepare(student, micro, demonstration, support, |teacher| {
                Ok(SelfDistillTargets {
                    teacher,
                    divergence: c.divergence,
                    form: c.form,
                    baseline: SampledTokenBaseline::Current,
                    token_clip: None,
                    aggregation: c.aggregation,
                })
            })
    }

    self_teacher_hooks!();
}
