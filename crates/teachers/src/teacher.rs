//! The [`Teacher`] trait, and how every strategy turns its logits into the requested support.

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use opd_divergences::TeacherTarget;
use opd_policy::{Llama, Policy, SequenceBatch, Trainable};
use opd_rollout::{ScoreOptions, score_by};

use crate::error::{Result, TeacherError};
use crate::output::{Request, TeacherOutput, TeacherSupport};

/// A teacher scores the student's own responses.
///
/// `batch` holds the contexts the teacher reads (the student's, or privileged ones built with
/// [`crate::privileged`]) and the student's exact response ids; the output is laid out
/// `[B, R, ·]` like the student's logits of the same responses. It is computed on the inner
/// backend (no graph, the fast CPU kernels) and returned as constants. `M` is the student's
/// model (any [`Trainable`]); a teacher that reads the student's weights (frozen, current, EMA,
/// trust region) runs `M::Inner`, one with a model of its own runs that.
pub trait Teacher<B: AutodiffBackend, M: Trainable<B> = Llama<B>> {
    /// The teacher's distribution at every response position of `batch`, in the support and
    /// at the temperature of `request`. `student` is the student as it is now (the current
    /// and trust-region teachers read its weights).
    fn outputs(
        &self,
        student: &M,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>>;

    /// Called after each optimizer step of the student (the EMA teacher moves here).
    fn after_step(&mut self, _student: &M) -> Result<()> {
        Ok(())
    }

    /// The weights this teacher has moved to on its own (the EMA's average), which a
    /// checkpoint must keep; `None` for teachers that are a function of the initial and current
    /// student (frozen, current, trust region) or fixed (an external model).
    fn moving_weights(&self) -> Option<&M::Inner> {
        None
    }

    /// Puts back weights read from [`Teacher::moving_weights`] (when resuming a run).
    fn set_moving_weights(&mut self, _weights: M::Inner) {}
}

/// A boxed teacher is a teacher: trainers hold `Box<dyn Teacher<B>>` chosen at run time.
impl<B: AutodiffBackend, M: Trainable<B>, T: Teacher<B, M> + ?Sized> Teacher<B, M> for Box<T> {
    fn outputs(
        &self,
        student: &M,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>> {
        (**self).outputs(student, batch, request)
    }

    fn after_step(&mut self, student: &M) -> Result<()> {
        (**self).after_step(student)
    }

    fn moving_weights(&self) -> Option<&M::Inner> {
        (**self).moving_weights()
    }

    fn set_moving_weights(&mut self, weights: M::Inner) {
        (**self).set_moving_weights(weights)
    }
}

/// A teacher model's scores of some rows at their response positions: its final hidden
/// states `[m, R, d]` and output head `[V, d]` (logits `hidden · headᵀ`), or its logits
/// `[m, R, V]` when the head is not a plain product.
pub(crate) enum TeacherScores<I: Backend> {
    /// Hidden states and the head.
    Hidden {
        hidden: Tensor<I, 3>,
        head: Tensor<I, 2>,
    },
    /// Formed logits.
    Logits(Tensor<I, 3>),
}

impl<I: Backend> TeacherScores<I> {
    /// `model`'s scores of `rows`.
    pub fn of(model: &impl Policy<I>, rows: &SequenceBatch) -> opd_policy::Result<Self> {
        let hidden = model.response_hidden(rows)?;
        Ok(match model.output_head() {
            Some(head) => Self::Hidden { hidden, head },
            None => Self::Logits(model.project(hidden)),
        })
    }

    /// The logits `[m, R, V]`.
    pub fn logits(self) -> Tensor<I, 3> {
        match self {
            Self::Hidden { hidden, head } => opd_divergences::head_logits(hidden, head),
            Self::Logits(logits) => logits,
        }
    }
}

/// The requested support from a source of scores for any rows of `batch`: the full
/// distribution in one call (as hidden states and the head when the request allows it and the
/// model has a plain head, so the loss forms the logits a block at a time), top-k and
/// sampled-token log-probs `micro_batch` rows at a time.
pub(crate) fn respond<B: AutodiffBackend>(
    batch: &SequenceBatch,
    request: &Request,
    mut scores: impl FnMut(&SequenceBatch) -> opd_policy::Result<TeacherScores<B::InnerBackend>>,
) -> Result<TeacherOutput<B>> {
    let temperature = request.temperature;
    let top_k = match request.support {
        TeacherSupport::Logits => {
            let target = match scores(batch)? {
                TeacherScores::Hidden { hidden, head } if request.hidden_states => {
                    TeacherTarget::Hidden {
                        hidden: Tensor::from_inner(hidden),
                        head: Tensor::from_inner(head),
                    }
                }
                other => TeacherTarget::Logits(Tensor::from_inner(other.logits())),
            };
            return Ok(TeacherOutput::Distribution {
                target,
                temperature,
            });
        }
        TeacherSupport::TopK(0) => {
            return Err(TeacherError::InvalidArgument {
                name: "top_k",
                value: "0".into(),
                expected: "at least 1 token",
            });
        }
        TeacherSupport::TopK(k) => k,
        TeacherSupport::SampledToken => 0,
    };
    let options = ScoreOptions {
        micro_batch: request.micro_batch,
        top_k,
        temperature,
        ranks: false,
    };
    let scores = score_by(batch, options, |rows| Ok(scores(rows)?.logits()))?;
    Ok(match scores.top_k {
        Some(top) => TeacherOutput::Distribution {
            target: TeacherTarget::TopK {
                ids: Tensor::from_inner(top.ids),
                log_probs: Tensor::from_inner(top.log_probs),
            },
            temperature,
        },
        None => TeacherOutput::SampledToken {
            log_probs: Tensor::from_inner(scores.logprobs),
            temperature,
        },
    })
}
