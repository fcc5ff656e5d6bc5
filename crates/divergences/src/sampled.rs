//! Sampled-token divergences: estimators of the reverse KL from the log-probs of the tokens
//! the student actually sampled, and the OPD token advantage with its REINFORCE surrogate.
//!
//! With `r = log p_S(ŷ_t) − log p_T(ŷ_t)` at a token `ŷ_t ~ p_S`:
//! `k1 = r`, `k2 = r²/2`, `k3 = (e^{−r} − 1) + r`. Only `E[k1]` and `E[k3]` equal `KL(p_S‖p_T)`;
//! `k3` is non-negative with low variance, `k2` is biased. These hold for tokens drawn from
//! `p_S` itself: sampling with top-k, top-p or min-p draws from another distribution and biases
//! all three.

use burn::tensor::{Bool, Int, Tensor, backend::Backend};

use crate::backend::DivergenceBackend;
use crate::check;
use crate::error::Result;
use crate::head::{BlockObserver, HeadOptions, lifted, linear_rows};
use crate::loss::{LossOutput, scatter_rows};
use crate::positions::token_log_probs_at;
use crate::reduce::{Reduction, check_reduction, clip_per_token, reduce_unchecked};

/// A single-sample estimator of `KL(p_S‖p_T)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// `k1 = r`: unbiased, high variance, can be negative.
    K1,
    /// `k2 = r²/2`: biased, low variance, non-negative.
    K2,
    /// `k3 = (e^{−r} − 1) + r`: unbiased, low variance, non-negative.
    K3,
}

impl Estimator {
    /// The estimate at each token from the student's and teacher's log-probs of the sampled
    /// tokens (same shape). Gradients flow through the student's log-probs only.
    pub fn estimate<B: Backend, const D: usize>(
        self,
        student_log_probs: Tensor<B, D>,
        teacher_log_probs: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let r = student_log_probs - teacher_log_probs.detach();
        match self {
            Self::K1 => r,
            Self::K2 => r.square().mul_scalar(0.5),
            Self::K3 => r.clone().neg().exp().sub_scalar(1.0) + r,
        }
    }
}

/// The OPD token advantage `A_t = log p_T(ŷ_t) − log p_S(ŷ_t)`, detached: the per-token reward
/// whose REINFORCE gradient is the reverse KL's.
pub fn token_advantage<B: Backend, const D: usize>(
    student_log_probs: Tensor<B, D>,
    teacher_log_probs: Tensor<B, D>,
) -> Tensor<B, D> {
    (teacher_log_probs - student_log_probs).detach()
}

/// The REINFORCE surrogate `−sg(A_t) · log p_S(ŷ_t)`: its gradient `−A_t ∇ log p_S(ŷ_t)` is,
/// in expectation over `ŷ ~ p_S`, the gradient of the reverse KL when `A_t` is
/// [`token_advantage`].
pub fn reinforce_surrogate<B: Backend, const D: usize>(
    student_log_probs: Tensor<B, D>,
    advantage: Tensor<B, D>,
) -> Tensor<B, D> {
    student_log_probs * advantage.detach().neg()
}

/// `log p(ŷ_{b,t})` under logits `[B, T, V]` at temperature `τ` for ids `[B, T]`: output `[B, T]`,
/// zero where `mask` is false. Only masked positions are evaluated, in chunks; the backward
/// is the closed form `(onehot − p) / τ`.
pub fn sequence_log_probs<B: DivergenceBackend>(
    logits: Tensor<B, 3>,
    ids: Tensor<B, 2, Int>,
    mask: Tensor<B, 2, Bool>,
    temperature: f64,
    chunk_size: usize,
) -> Result<Tensor<B, 2>> {
    let [batch, time, _] = logits.dims();
    check::same_shape("token ids", &[batch, time], &ids.dims())?;
    check::same_shape("mask", &[batch, time], &mask.dims())?;
    let rows = check::mask_rows(&mask)?;
    let values = token_log_probs_at(
        logits,
        ids.reshape([batch * time]),
        rows.clone(),
        temperature,
        chunk_size,
    )?;
    Ok(scatter_rows(values, &rows, batch, time))
}

/// `log p(ŷ_{b,t})` with `p = softmax(h_{b,t}·Wᵀ / τ)` from final hidden states `hidden`
/// `[B, T, d]` and the output head `head` `[V, d]`, for ids `[B, T]`: output `[B, T]`, zero where
/// `mask` is false. The same values as [`sequence_log_probs`] of `hidden·headᵀ`, but the logits
/// are formed a block of rows at a time (128 MB each) in the forward and the backward and
/// never as one `[B, T, V]` tensor: the output head fused with the loss. The gradient reaches
/// `hidden` and, when it trains, `head` (a tied embedding).
pub fn sequence_log_probs_from_hidden<B: DivergenceBackend>(
    hidden: Tensor<B, 3>,
    head: Tensor<B, 2>,
    ids: Tensor<B, 2, Int>,
    mask: Tensor<B, 2, Bool>,
    temperature: f64,
) -> Result<Tensor<B, 2>> {
    sequence_log_probs_from_hidden_with(hidden, head, ids, mask, temperature, Default::default())
}

/// [`sequence_log_probs_from_hidden`] with [`HeadOptions`]: an observer of the blocks of
/// logits the forward forms, and the weights of a loss linear in the log-probs (e.g. the mask
/// of a token-mean NLL), with which a head that trains forms its gradient in the forward.
pub fn sequence_log_probs_from_hidden_with<B: DivergenceBackend>(
    hidden: Tensor<B, 3>,
    head: Tensor<B, 2>,
    ids: Tensor<B, 2, Int>,
    mask: Tensor<B, 2, Bool>,
    temperature: f64,
    options: HeadOptions<'_, B>,
) -> Result<Tensor<B, 2>> {
    let temperature = check::positive("temperature", temperature)?;
    let [batch, time, width] = hidden.dims();
    let [vocab, head_width] = head.dims();
    check::non_empty("hidden states", &[batch, time, width])?;
    check::non_empty("output head", &[vocab, head_width])?;
    check::same_shape("output head", &[vocab, width], &[vocab, head_width])?;
    check::same_shape("token ids", &[batch, time], &ids.dims())?;
    check::same_shape("mask", &[batch, time], &mask.dims())?;
    check::ids_in_vocab(&ids, vocab)?;
    let rows = check::mask_rows(&mask)?;
    let HeadOptions { observe, linear } = options;
    let linear = linear
        .map(|c| linear_rows(c, &rows, [batch, time]))
        .transpose()?;
    let mut observe = observe.map(lifted);
    let values = Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(
        B::head_token_log_probs(
            hidden
                .reshape([batch * time, width])
                .into_primitive()
                .tensor(),
            head.into_primitive().tensor(),
            ids.reshape([batch * time]).into_primitive(),
            &rows,
            temperature,
            crate::head::rows_per_block(vocab),
            observe
                .as_mut()
                .map(|observe| observe as &mut BlockObserver<'_, B>),
            linear,
        ),
    ));
    check::finite("token log-prob", &values)?;
    Ok(scatter_rows(values, &rows, batch, time))
}

/// What a [`SampledTokenLoss`] minimizes at each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampledObjective {
    /// [`reinforce_surrogate`] with the OPD [`token_advantage`].
    Reinforce,
    /// An estimator of the reverse KL, differentiated directly.
    Estimator(Estimator),
}

/// `L = reduce_m(min(ℓ_t, clip))` with `ℓ_t` the per-token [`SampledObjective`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampledTokenLoss {
    /// The per-token objective.
    pub objective: SampledObjective,
    /// Per-token clipping `min(ℓ_t, clip)`; `None` keeps it unclipped.
    pub token_clip: Option<f64>,
    /// How per-token values are reduced.
    pub reduction: Reduction,
}

impl SampledTokenLoss {
    /// A token-mean loss without clipping.
    pub fn new(objective: SampledObjective) -> Self {
        Self {
            objective,
            token_clip: None,
            reduction: Reduction::TokenMean,
        }
    }

    /// Evaluates the loss from both models' log-probs of the sampled tokens `[B, T]`.
    /// `per_token` in the output is the `k3` estimate of the reverse KL (for monitoring).
    pub fn forward<B: DivergenceBackend>(
        &self,
        student_log_probs: Tensor<B, 2>,
        teacher_log_probs: Tensor<B, 2>,
        mask: Tensor<B, 2, Bool>,
    ) -> Result<LossOutput<B>> {
        let dims = student_log_probs.dims();
        check::same_shape("teacher log-probs", &dims, &teacher_log_probs.dims())?;
        check::same_shape("mask", &dims, &mask.dims())?;
        check_reduction(self.reduction)?;
        let tokens = check::mask_rows(&mask)?.count(dims[0] * dims[1]);
        // Off-mask positions may hold anything (padding): replace them before any arithmetic.
        let off = mask.clone().bool_not();
        let student = student_log_probs.mask_fill(off.clone(), 0.0);
        let teacher = teacher_log_probs.detach().mask_fill(off, 0.0);
        check::finite("student log-probs", &student)?;
        check::finite("teacher log-probs", &teacher)?;
        let per_token = match self.objective {
            SampledObjective::Reinforce => reinforce_surrogate(
                student.clone(),
                token_advantage(student.clone(), teacher.clone()),
            ),
            SampledObjective::Estimator(estimator) => {
                estimator.estimate(student.clone(), teacher.clone())
            }
        };
        let clipped = match self.token_clip {
            Some(clip) => clip_per_token(per_token, clip)?,
            None => per_token,
        };
        Ok(LossOutput {
            loss: reduce_unchecked(clipped, mask, self.reduction),
            per_token: Estimator::K3.estimate(student, teacher).detach(),
            tokens,
        })
    }
}
