//! On-policy distillation from a teacher model, in the forms of "How to Use Privileged
//! Information in RL: On-policy Distillation" (the surrogate with a trust region), of Tinker
//! and slime (a per-token advantage trained with importance sampling), and of GKD / TRL (a
//! divergence over the full vocabulary or the teacher's top-k).

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use opd_divergences::sampled::Estimator;
use opd_divergences::{Divergence, DivergenceBackend, DivergenceOptions};
use opd_policy::Llama;
use opd_teachers::{Current, Teacher, TeacherOutput, TeacherSupport};
use serde::{Deserialize, Serialize};

use super::grpo::check_aggregation;
use super::opd_fields::OpdFields;
use super::routing::Routed;
use super::{
    Forward, LinearIn, Loss, Method, MicroBatch, Parts, Prepared, Rollouts, SequenceAdvantages,
};
use super::{Targets, grpo::Advantages};
use crate::check::{non_negative, top_k, unbiased_sampling, unit};
use crate::config::{MethodSettings, Reduction, SamplingConfig};
use crate::diagnostics::host;
use crate::error::{Result, TrainError};
use crate::objectives::opd;

/// On-policy distillation from a teacher model that shares the student's vocabulary.
///
/// In a run file the form is `form = "surrogate" | "advantage" | "divergence"` beside its own
/// settings (`trust_region_beta`, `trust_region_estimator`; `discount`, `reward_weight`;
/// `divergence_beta`, `teacher_top_k`); a setting of another form is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "OpdFields", into = "OpdFields")]
pub struct OpdConfig {
    /// The form of the loss and its settings. Default the surrogate.
    pub form: OpdForm,
    /// Loss aggregation. Default token mean.
    pub aggregation: Reduction,
}

impl Default for OpdConfig {
    fn default() -> Self {
        Self {
            form: OpdForm::surrogate(),
            aggregation: Reduction::TokenMean,
        }
    }
}

/// Which form of on-policy distillation to minimize, with its own settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpdForm {
    /// `ℓ_t = ρ_t (log π_θ(ŷ_t) − log π_T(ŷ_t)) + β_tr KL(π_old ‖ π_θ)_t`; the trust region's
    /// gradient is zero while `π_θ = π_old`, so it acts from the second mini-batch.
    Surrogate {
        /// `β_tr`. Default 0.1.
        trust_region_beta: f64,
        /// How `KL(π_old ‖ π_θ)` is computed. Default k3 (the source's).
        estimator: TrustRegionEstimator,
    },
    /// `A_t = Σ_{s≥t} γ^{s−t}(log p_T(ŷ_s) − log p_old(ŷ_s))` (detached), plus
    /// `reward_weight × (r − mean_batch r)`, trained with `ℓ_t = −ρ_t A_t` (Tinker, slime).
    Advantage {
        /// `γ`; 0 keeps each token's own term (Tinker's default). Default 0.
        discount: f64,
        /// Weight of the batch-centered task reward. Default 0.
        reward_weight: f64,
    },
    /// `ℓ_t = JSD_β(p_T ‖ p_θ)` over the full vocabulary, or the teacher's top-k plus a tail.
    Divergence {
        /// `β`: 1 reverse KL, 0 forward KL. Default 1.
        beta: f64,
        /// The teacher's top-k plus a tail bucket; `None` the full vocabulary. Default `None`.
        teacher_top_k: Option<usize>,
    },
}

impl OpdForm {
    /// The surrogate with its defaults (`β_tr` = 0.1, k3).
    pub fn surrogate() -> Self {
        Self::Surrogate {
            trust_region_beta: 0.1,
            estimator: TrustRegionEstimator::K3,
        }
    }

    /// The advantage form with its defaults (`γ` = 0, no task reward).
    pub fn advantage() -> Self {
        Self::Advantage {
            discount: 0.0,
            reward_weight: 0.0,
        }
    }

    /// The divergence form with its defaults (reverse KL, full vocabulary).
    pub fn divergence() -> Self {
        Self::Divergence {
            beta: 1.0,
            teacher_top_k: None,
        }
    }
}

/// How the surrogate's trust region `KL(π_old ‖ π_θ)` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustRegionEstimator {
    /// `−log ρ_t` at the sampled token: unbiased, can be negative.
    K1,
    /// `(log ρ_t)²/2`: biased, non-negative.
    K2,
    /// `ρ_t − 1 − log ρ_t`: unbiased and non-negative (the source's).
    K3,
    /// `Σ_v π_old(v) (log π_old(v) − log π_θ(v))` over the full vocabulary, from `π_old`'s
    /// logits (one more no-graph forward of the student per micro-batch, and its `[m, R, V]`
    /// logits kept until the update).
    Exact,
}

impl MethodSettings for OpdConfig {
    fn name(&self) -> &'static str {
        "opd"
    }

    fn uses_rewards(&self) -> bool {
        matches!(self.form, OpdForm::Advantage { reward_weight, .. } if reward_weight != 0.0)
    }

    fn needs_teacher_model(&self) -> bool {
        true
    }

    fn validate(&self, sampling: &SamplingConfig) -> Result<()> {
        check_aggregation(self.aggregation)?;
        match self.form {
            OpdForm::Surrogate {
                trust_region_beta, ..
            } => non_negative("objective.trust_region_beta", trust_region_beta)?,
            OpdForm::Advantage {
                discount,
                reward_weight,
            } => {
                unit("objective.discount", discount)?;
                if !reward_weight.is_finite() {
                    return Err(TrainError::Config {
                        field: "objective.reward_weight",
                        value: reward_weight.to_string(),
                        expected: "a finite number",
                    });
                }
            }
            OpdForm::Divergence {
                beta,
                teacher_top_k,
            } => {
                unit("objective.divergence_beta", beta)?;
                return top_k("objective.teacher_top_k", teacher_top_k);
            }
        }
        unbiased_sampling(sampling)
    }
}

/// The OPD method and its teacher models.
pub(super) struct Opd<B: AutodiffBackend + DivergenceBackend> {
    config: OpdConfig,
    teachers: Routed<B>,
}

impl<B: AutodiffBackend + DivergenceBackend> Opd<B> {
    /// An error without a teacher (OPD cannot run without one), or with tasks routed to a
    /// teacher the run does not have.
    pub fn new(config: OpdConfig, parts: Parts<'_, B>) -> Result<Self> {
        let teachers = Routed::new(parts.teachers, parts.tasks)?;
        Ok(Self { config, teachers })
    }
}

/// What a micro-batch's teachers fixed, and which teacher scored each row.
struct OpdTargets<B: AutodiffBackend + DivergenceBackend> {
    form: FormTargets<B>,
    teacher_of_rows: Vec<usize>,
}

impl<B: AutodiffBackend + DivergenceBackend> Targets<B> for OpdTargets<B> {
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>> {
        self.form.loss(student)
    }

    fn teacher(&self) -> Option<&TeacherOutput<B>> {
        self.form.teacher()
    }

    fn teacher_of_rows(&self) -> &[usize] {
        &self.teacher_of_rows
    }
}

/// What each form fixes before the update.
enum FormTargets<B: AutodiffBackend + DivergenceBackend> {
    Surrogate {
        teacher: Tensor<B, 2>,
        beta: f64,
        trust_region: TrustRegion<B>,
        aggregation: Reduction,
    },
    Advantage {
        teacher: Tensor<B, 2>,
        advantages: Advantages<B>,
        aggregation: Reduction,
    },
    Divergence {
        teacher: TeacherOutput<B>,
        beta: f64,
        aggregation: Reduction,
    },
}

/// The trust region's estimator, with `π_old`'s logits for the exact one.
enum TrustRegion<B: AutodiffBackend + DivergenceBackend> {
    Sampled(Estimator),
    Exact(TeacherOutput<B>),
}

impl<B: AutodiffBackend + DivergenceBackend> FormTargets<B> {
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>> {
        let old = student.old.clone();
        let (mut loss, aggregation) = match self {
            Self::Surrogate {
                teacher,
                beta,
                trust_region,
                aggregation,
            } => {
                let lp = student.log_probs()?;
                let per_token = match trust_region {
                    TrustRegion::Sampled(Estimator::K3) => {
                        opd::surrogate(lp.clone(), old, teacher.clone(), *beta)
                    }
                    TrustRegion::Sampled(estimator) => {
                        opd::surrogate(lp.clone(), old.clone(), teacher.clone(), 0.0)
                            + opd::trust_region(lp.clone(), old, *estimator).mul_scalar(*beta)
                    }
                    TrustRegion::Exact(old_logits) => {
                        let options = DivergenceOptions::new(Divergence::ForwardKl);
                        opd::surrogate(lp.clone(), old, teacher.clone(), 0.0)
                            + student.divergence(old_logits, options)?.mul_scalar(*beta)
                    }
                };
                let mut loss = Loss::single("opd", per_token);
                loss.divergence = Some(Estimator::K3.estimate(lp.detach(), teacher.clone()));
                (loss, *aggregation)
            }
            Self::Advantage {
                teacher,
                advantages,
                aggregation,
            } => {
                let lp = student.log_probs()?;
                let pg = opd::importance_weighted(lp.clone(), old, advantages.values.clone());
                let mut loss = Loss::single("pg", pg);
                loss.divergence = Some(Estimator::K3.estimate(lp.detach(), teacher.clone()));
                (loss, *aggregation)
            }
            Self::Divergence {
                teacher,
                beta,
                aggregation,
            } => {
                let options = DivergenceOptions::new(Divergence::jsd(*beta)?);
                let values = student.divergence(teacher, options)?;
                let mut loss = Loss::single("distill", values.clone());
                loss.divergence = Some(values);
                (loss, *aggregation)
            }
        };
        loss.aggregation = aggregation;
        Ok(loss)
    }

    fn teacher(&self) -> Option<&TeacherOutput<B>> {
        match self {
            Self::Divergence { teacher, .. } => Some(teacher),
            _ => None,
        }
    }
}

impl<B: AutodiffBackend + DivergenceBackend> Method<B> for Opd<B> {
    fn rollouts(&self) -> Rollouts {
        Rollouts::Sampled { group: 1 }
    }

    fn linear_in(&self) -> Option<(LinearIn, Reduction)> {
        matches!(self.config.form, OpdForm::Divergence { .. })
            .then_some((LinearIn::Divergence, self.config.aggregation))
    }

    fn sequence_advantages(&self, rewards: &[f64]) -> Option<SequenceAdvantages> {
        let OpdForm::Advantage { reward_weight, .. } = self.config.form else {
            return None;
        };
        if reward_weight == 0.0 {
            return None;
        }
        let mean = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
        Some(SequenceAdvantages {
            values: rewards.iter().map(|r| reward_weight * (r - mean)).collect(),
            zero_std: None,
        })
    }

    fn targets(&self, student: &Llama<B>, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
        let teacher_of_rows = std::cell::RefCell::new(Vec::new());
        let score = |support| -> Result<TeacherOutput<B>> {
            let request = micro.request(support, 1.0)?;
            let (output, rows) = self.teachers.outputs(student, micro, &request)?;
            *teacher_of_rows.borrow_mut() = rows;
            Ok(output)
        };
        let tokens = || -> Result<Tensor<B, 2>> {
            Ok(score(TeacherSupport::SampledToken)?.into_token_log_probs(1.0)?)
        };
        let aggregation = self.config.aggregation;
        let form = match self.config.form {
            OpdForm::Surrogate {
                trust_region_beta,
                estimator,
            } => {
                let trust_region = match estimator {
                    TrustRegionEstimator::K1 => TrustRegion::Sampled(Estimator::K1),
                    TrustRegionEstimator::K2 => TrustRegion::Sampled(Estimator::K2),
                    TrustRegionEstimator::K3 => TrustRegion::Sampled(Estimator::K3),
                    TrustRegionEstimator::Exact => TrustRegion::Exact(Current.outputs(
                        student,
                        micro.batch,
                        &micro.request(TeacherSupport::Logits, 1.0)?,
                    )?),
                };
                FormTargets::Surrogate {
                    teacher: tokens()?,
                    beta: trust_region_beta,
                    trust_region,
                    aggregation,
                }
            }
            OpdForm::Advantage { discount, .. } => {
                let teacher = tokens()?;
                let teacher_host = host(teacher.clone().inner());
                let width = micro.batch.response_width();
                let (values, host) = micro.per_token(|i, row, len| {
                    let at = i * width;
                    let base = micro.advantages.get(row).copied().unwrap_or(0.0);
                    let own = opd::advantages(
                        &micro.old_host[at..at + len],
                        &teacher_host[at..at + len],
                        discount,
                    );
                    own.into_iter().map(|a| base + a).collect()
                });
                FormTargets::Advantage {
                    teacher,
                    advantages: Advantages { values, host },
                    aggregation,
                }
            }
            OpdForm::Divergence {
                beta,
                teacher_top_k,
            } => FormTargets::Divergence {
                teacher: score(teacher_top_k.map_or(TeacherSupport::Logits, TeacherSupport::TopK))?,
                beta,
                aggregation,
            },
        };
        let targets = OpdTargets {
            form,
            teacher_of_rows: teacher_of_rows.into_inner(),
        };
        Ok(Prepared::on_responses(micro, targets))
    }

    fn teacher_names(&self) -> Vec<String> {
        self.teachers.names()
    }
}
