//! How a run file spells [`OpdConfig`]: the form's name beside every form's settings, read
//! into the form that carries only its own (a setting of another form is an error).

use serde::{Deserialize, Serialize};

use super::opd::{OpdConfig, OpdForm, TrustRegionEstimator};
use crate::config::Reduction;

/// The run file's spelling of [`OpdConfig`]: the form's name beside every form's settings,
/// each absent unless written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpdFields {
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
                "divergence_beta",
                f.divergence_beta.is_some_and(|v| v != 1.0),
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
                beta: f.divergence_beta.unwrap_or(1.0),
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
                beta,
                teacher_top_k,
            } => {
                f.form = FormName::Divergence;
                f.divergence_beta = Some(beta);
                f.teacher_top_k = teacher_top_k;
            }
        }
        f
    }
}
