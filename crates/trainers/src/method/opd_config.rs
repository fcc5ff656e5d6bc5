//! OPD's settings ([`OpdConfig`]: the form of the loss with its own settings, the aggregation)
//! and how a run file spells them: the form's name beside every form's settings, read into
//! the form that carries only its own (a setting of another form is an error).

use serde::{Deserialize, Serialize};

use crate::check::{self, non_negative, top_k, unit};
use crate::error::{Result, TrainError};
use crate::settings::{MethodSettings, SamplingConfig, unbiased_sampling};
use opd_divergences::{Divergence, Reduction};

/// On-policy distillation from a teacher model that shares the student's vocabulary.
///
/// In a run file the form is `form = "surrogate" | "advantage" | "divergence"` beside its own
/// settings (`trust_region_beta`, `trust_region_estimator`; `discount`, `reward_weight`;
/// `divergence`, `teacher_top_k`); a setting of another form is an error.
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
    /// `ℓ_t = D(p_T ‖ p_θ)` over the full vocabulary, or the teacher's top-k plus a tail.
    Divergence {
        /// `D`. Default the reverse KL.
        divergence: Divergence,
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
            divergence: Divergence::ReverseKl,
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
        check::aggregation(self.aggregation)?;
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
                divergence,
                teacher_top_k,
            } => {
                check::divergence("objective.divergence", divergence)?;
                return top_k("objective.teacher_top_k", teacher_top_k);
            }
        }
        unbiased_sampling(sampling)
    }
}

/// The run file's spelling of [`OpdConfig`]: the form's name beside every form's settings,
/// each absent unless written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpdFields {
    #[serde(default)]
    form: FormName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trust_region_beta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trust_region_estimator: Option<TrustRegionEstimator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    discount: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reward_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    divergence: Option<Divergence>,
    /// Older run files' spelling of `divergence = { jsd = β }`; read, never written.
    #[serde(default, skip_serializing)]
    divergence_beta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    teacher_top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aggregation: Option<Reduction>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FormName {
    #[default]
    Surrogate,
    Advantage,
    Divergence,
}

impl TryFrom<OpdFields> for OpdConfig {
    type Error = String;

    /// The form with its settings; a setting of another form, unless it is that form's
    /// default (and so has no effect), is an error naming it.
    fn try_from(f: OpdFields) -> std::result::Result<Self, String> {
        let divergence = match (f.divergence, f.divergence_beta) {
            (Some(_), Some(_)) => {
                return Err("`divergence_beta` is the older spelling of `divergence`: \
                            write `divergence` alone"
                    .into());
            }
            (divergence, None) => divergence,
            (None, Some(beta)) => Some(Divergence::jsd(beta).map_err(|e| e.to_string())?),
        };
        let belongs = [
            (
                "trust_region_beta",
                f.trust_region_beta.is_some_and(|v| v != 0.1),
                FormName::Surrogate,
            ),
            (
                "trust_region_estimator",
                f.trust_region_estimator
                    .is_some_and(|e| e != TrustRegionEstimator::K3),
                FormName::Surrogate,
            ),
            (
                "discount",
                f.discount.is_some_and(|v| v != 0.0),
                FormName::Advantage,
            ),
            (
                "reward_weight",
                f.reward_weight.is_some_and(|v| v != 0.0),
                FormName::Advantage,
            ),
            (
                "divergence",
                divergence.is_some_and(|d| d != Divergence::ReverseKl),
                FormName::Divergence,
            ),
            (
                "teacher_top_k",
                f.teacher_top_k.is_some(),
                FormName::Divergence,
            ),
        ];
        if let Some((name, _, owner)) = belongs
            .iter()
            .find(|(_, set, owner)| *set && *owner != f.form)
        {
            return Err(format!(
                "`{name}` is a setting of form = \"{}\", not of form = \"{}\"",
                form_name(*owner),
                form_name(f.form)
            ));
        }
        let form = match f.form {
            FormName::Surrogate => OpdForm::Surrogate {
                trust_region_beta: f.trust_region_beta.unwrap_or(0.1),
                estimator: f.trust_region_estimator.unwrap_or(TrustRegionEstimator::K3),
            },
            FormName::Advantage => OpdForm::Advantage {
                discount: f.discount.unwrap_or(0.0),
                reward_weight: f.reward_weight.unwrap_or(0.0),
            },
            FormName::Divergence => OpdForm::Divergence {
                divergence: divergence.unwrap_or(Divergence::ReverseKl),
                teacher_top_k: f.teacher_top_k,
            },
        };
        Ok(Self {
            form,
            aggregation: f.aggregation.unwrap_or(Reduction::TokenMean),
        })
    }
}

fn form_name(form: FormName) -> &'static str {
    match form {
        FormName::Surrogate => "surrogate",
        FormName::Advantage => "advantage",
        FormName::Divergence => "divergence",
    }
}

impl From<OpdConfig> for OpdFields {
    fn from(c: OpdConfig) -> Self {
        let mut f = Self {
            aggregation: Some(c.aggregation),
            ..Self::default()
        };
        match c.form {
            OpdForm::Surrogate {
                trust_region_beta,
                estimator,
            } => {
                f.form = FormName::Surrogate;
                f.trust_region_beta = Some(trust_region_beta);
                f.trust_region_estimator = Some(estimator);
            }
            OpdForm::Advantage {
                discount,
                reward_weight,
            } => {
                f.form = FormName::Advantage;
                f.discount = Some(discount);
                f.reward_weight = Some(reward_weight);
            }
            OpdForm::Divergence {
                divergence,
                teacher_top_k,
            } => {
                f.form = FormName::Divergence;
                f.divergence = Some(divergence);
                f.teacher_top_k = teacher_top_k;
            }
        }
        f
    }
}
