//! On-policy distillation from a teacher model, in the forms of "How to Use Privileged
//! Information in RL: On-policy Distillation" (the surrogate with a trust region), of Tinker
//! and slime (a per-token advantage trained with importance sampling), and of GKD / TRL (a
//! divergence over the full vocabulary or the teacher's top-k).

use burn::tensor::Tensor;
use opd_divergences::TrainingBackend;
use opd_divergences::sampled::Estimator;
use opd_divergences::{Divergence, DivergenceOptions};
use opd_policy::{Llama, Trainable};
use opd_teachers::{Current, Teacher, TeacherOutput, TeacherSupport};

use super::opd_config::{OpdConfig, OpdForm, TrustRegionEstimator};
use super::routing::Routed;
use super::{
    Forward, LinearIn, Loss, Method, MicroBatch, Parts, Prepared, Rollouts, SequenceAdvantages,
};
use super::{Targets, advantages::Advantages};
use crate::error::Result;
use crate::losses::opd;
use opd_divergences::Reduction;
use opd_divergences::host_values;

/// The OPD method and its teacher models.
pub(crate) struct Opd<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    config: OpdConfig,
    teachers: Routed<B, M>,
}

impl<B: TrainingBackend, M: Trainable<B>> Opd<B, M> {
    /// An error without a teacher (OPD cannot run without one), or with tasks routed to a
    /// teacher the run does not have.
    pub fn new(config: OpdConfig, parts: Parts<'_, B, M>) -> Result<Self> {
        let teachers = Routed::new(parts.teachers, parts.tasks)?;
        Ok(Self { config, teachers })
    }
}

/// What a micro-batch's teachers fixed, and which teacher scored each row.
struct OpdTargets<B: TrainingBackend> {
    form: FormTargets<B>,
    teacher_of_rows: Vec<usize>,
}

impl<B: TrainingBackend> Targets<B> for OpdTargets<B> {
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
enum FormTargets<B: TrainingBackend> {
    Surrogate {
        teacher: Tensor<B, 2>,
        trust_region_beta: f64,
        trust_region: TrustRegionTerm<B>,
        aggregation: Reduction,
    },
    Advantage {
        teacher: Tensor<B, 2>,
        advantages: Advantages<B>,
        aggregation: Reduction,
    },
    Divergence {
        teacher: TeacherOutput<B>,
        divergence: Divergence,
        aggregation: Reduction,
    },
}

/// The trust region's estimator, with `π_old`'s logits for the exact one.
enum TrustRegionTerm<B: TrainingBackend> {
    Sampled(Estimator),
    Exact(TeacherOutput<B>),
}

impl<B: TrainingBackend> FormTargets<B> {
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>> {
        let old = student.old.clone();
        let (mut loss, aggregation) = match self {
            Self::Surrogate {
                teacher,
                trust_region_beta: beta,
                trust_region,
                aggregation,
            } => {
                let lp = student.log_probs()?;
                let per_token = match trust_region {
                    TrustRegionTerm::Sampled(Estimator::K3) => {
                        opd::surrogate(lp.clone(), old, teacher.clone(), *beta)
                    }
                    TrustRegionTerm::Sampled(estimator) => {
                        opd::surrogate(lp.clone(), old.clone(), teacher.clone(), 0.0)
                            + opd::trust_region(lp.clone(), old, *estimator).mul_scalar(*beta)
                    }
                    TrustRegionTerm::Exact(old_logits) => {
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
                divergence,
                aggregation,
            } => {
                let options = DivergenceOptions::new(*divergence);
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

impl<B: TrainingBackend, M: Trainable<B>> Method<B, M> for Opd<B, M> {
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

    fn targets(&self, student: &M, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
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
                    TrustRegionEstimator::K1 => TrustRegionTerm::Sampled(Estimator::K1),
                    TrustRegionEstimator::K2 => TrustRegionTerm::Sampled(Estimator::K2),
                    TrustRegionEstimator::K3 => TrustRegionTerm::Sampled(Estimator::K3),
                    TrustRegionEstimator::Exact => TrustRegionTerm::Exact(Current.outputs(
                        student,
                        micro.batch,
                        &micro.request(TeacherSupport::Logits, 1.0)?,
                    )?),
                };
                FormTargets::Surrogate {
                    teacher: tokens()?,
                    trust_region_beta,
                    trust_region,
                    aggregation,
                }
            }
            OpdForm::Advantage { discount, .. } => {
                let teacher = tokens()?;
                let teacher_host = host_values(teacher.clone().inner());
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
                divergence,
                teacher_top_k,
            } => FormTargets::Divergence {
                teacher: score(teacher_top_k.map_or(TeacherSupport::Logits, TeacherSupport::TopK))?,
                divergence,
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
