//! What a teacher is asked for and what it returns: its distribution at every response
//! position of the student's batch, in the support the loss needs, as constants.

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use opd_divergences::TeacherTarget;

use crate::error::{Result, TeacherError};

/// The support of the teacher's distribution the loss needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeacherSupport {
    /// Full logits `[B, R, V]`: full-vocabulary divergences, or a top-k support chosen by
    /// the loss (the student's top-k, as SDPO's code does).
    Logits,
    /// The teacher's `k` most likely tokens and their log-probs `[B, R, k]`; the tail bucket is
    /// `1 − Σ exp(log-probs)`.
    TopK(usize),
    /// `log p_T(ŷ_t)` of each sampled token `[B, R]`: sampled-token estimators and OPD's
    /// per-token advantage.
    SampledToken,
}

/// A request to a teacher: the support and the temperature `τ` of `p_T = softmax(z_T / τ)`,
/// which must be the loss's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// What to return.
    pub support: TeacherSupport,
    /// Temperature of the teacher's distribution (the loss's temperature).
    pub temperature: f64,
    /// Rows per teacher forward for the top-k and sampled-token supports: memory grows as
    /// `micro_batch · R · V` logits.
    pub micro_batch: usize,
    /// For the full support: whether a model teacher may answer with its final hidden states
    /// and output head ([`opd_divergences::TeacherTarget::Hidden`]), for a loss that forms the
    /// logits a block at a time (`DistillationLoss::forward_from_hidden`), instead of its
    /// logits `[B, R, V]`. Default false.
    pub hidden_states: bool,
}

impl Request {
    /// A request for `support` at temperature `τ`, 4 rows per forward.
    pub fn new(support: TeacherSupport, temperature: f64) -> Result<Self> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(TeacherError::InvalidArgument {
                name: "temperature",
                value: temperature.to_string(),
                expected: "finite and > 0",
            });
        }
        Ok(Self {
            support,
            temperature,
            micro_batch: 4,
            hidden_states: false,
        })
    }
}

/// The teacher's distribution at every response position, in the student's `[B, R]` layout,
/// on the student's backend as constants (no graph: gradients never reach a teacher).
/// Padding positions hold zeros (top-k: id 0 and −∞); the response mask says which count.
#[derive(Debug, Clone)]
pub enum TeacherOutput<B: AutodiffBackend> {
    /// A distribution over the vocabulary, as the divergences take it: raw logits `z_T`
    /// `[B, R, V]` to be used at `temperature`, or the top-k ids and
    /// `log softmax(z_T / τ)` at them `[B, R, k]`, most likely first.
    Distribution {
        /// The logits or the top-k.
        target: TeacherTarget<B, 3>,
        /// `τ`.
        temperature: f64,
    },
    /// `log softmax(z_T / τ)[ŷ_t]` of each response token, `[B, R]`.
    SampledToken {
        /// The log-probs.
        log_probs: Tensor<B, 2>,
        /// `τ`.
        temperature: f64,
    },
}

impl<B: AutodiffBackend> TeacherOutput<B> {
    /// The temperature the output was computed at.
    pub fn temperature(&self) -> f64 {
        match self {
            Self::Distribution { temperature, .. } | Self::SampledToken { temperature, .. } => {
                *temperature
            }
        }
    }

    /// An error unless the loss's temperature is the teacher's.
    fn check_temperature(&self, loss_temperature: f64) -> Result<()> {
        let teacher = self.temperature();
        if teacher == loss_temperature {
            Ok(())
        } else {
            Err(TeacherError::TemperatureMismatch {
                teacher,
                loss: loss_temperature,
            })
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Distribution {
                target: TeacherTarget::Logits(_) | TeacherTarget::Hidden { .. },
                ..
            } => "full logits",
            Self::Distribution { .. } => "a top-k",
            Self::SampledToken { .. } => "sampled-token log-probs",
        }
    }

    /// The output at rows `range` of the batch only (a teacher given by hidden states keeps its
    /// head).
    pub fn rows(&self, range: std::ops::Range<usize>) -> Self {
        let (start, len) = (range.start, range.len());
        match self {
            Self::Distribution {
                target,
                temperature,
            } => Self::Distribution {
                target: match target {
                    TeacherTarget::Logits(t) => {
                        TeacherTarget::Logits(t.clone().narrow(0, start, len))
                    }
                    TeacherTarget::TopK { ids, log_probs } => TeacherTarget::TopK {
                        ids: ids.clone().narrow(0, start, len),
                        log_probs: log_probs.clone().narrow(0, start, len),
                    },
                    TeacherTarget::Hidden { hidden, head } => TeacherTarget::Hidden {
                        hidden: hidden.clone().narrow(0, start, len),
                        head: head.clone(),
                    },
                },
                temperature: *temperature,
            },
            Self::SampledToken {
                log_probs,
                temperature,
            } => Self::SampledToken {
                log_probs: log_probs.clone().narrow(0, start, len),
                temperature: *temperature,
            },
        }
    }

    /// The teacher side of a divergence over `[B, R, V]` student logits evaluated at
    /// `loss_temperature`: an error unless it is the temperature the teacher scored at, or if
    /// the output holds sampled-token log-probs only.
    pub fn into_target(self, loss_temperature: f64) -> Result<TeacherTarget<B, 3>> {
        self.check_temperature(loss_temperature)?;
        match self {
            Self::Distribution { target, .. } => Ok(target),
            other => Err(TeacherError::WrongSupport {
                have: other.name(),
                want: "logits or a top-k",
            }),
        }
    }

    /// The sampled-token log-probs `[B, R]` at `loss_temperature`; an error for another
    /// temperature or another support.
    pub fn into_token_log_probs(self, loss_temperature: f64) -> Result<Tensor<B, 2>> {
        self.check_temperature(loss_temperature)?;
        match self {
            Self::SampledToken { log_probs, .. } => Ok(log_probs),
            other => Err(TeacherError::WrongSupport {
                have: other.name(),
                want: "sampled-token log-probs",
            }),
        }
    }
}
