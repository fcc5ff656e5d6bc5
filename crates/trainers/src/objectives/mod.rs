//! The objectives, each a short function of per-token log-probs `[B, R]` (and teacher
//! outputs) returning per-token losses `[B, R]`, and the aggregation that turns them into the
//! scalar to differentiate.
//!
//! Notation: `lp = log π_θ(ŷ_t)` (with gradient), `old = log π_old(ŷ_t)` (the sampler's, no
//! gradient), `ρ = exp(lp − old)`, `teacher = log π_T(ŷ_t)`.

pub mod distill;
pub mod grpo;
pub mod opd;
pub mod sft;

use burn::tensor::{Bool, Tensor, backend::Backend};

use crate::config::Aggregation;

/// The denominators of a whole mini-batch: micro-batch losses aggregated with them add up to
/// the mini-batch's loss, so gradient accumulation changes nothing but memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalizer {
    /// Counted tokens in the mini-batch.
    pub tokens: usize,
    /// Rows with at least one counted token.
    pub sequences: usize,
}

/// The share of a micro-batch in the mini-batch loss:
/// token mean `Σ m ℓ / N_tokens`; sequence mean `Σ_b (Σ_t m ℓ / Σ_t m) / N_sequences`;
/// constant `Σ m ℓ / (N_sequences · L)`. Off-mask values are replaced by zero, so padding
/// holding NaN cannot leak in.
pub fn aggregate<B: Backend>(
    per_token: Tensor<B, 2>,
    mask: Tensor<B, 2, Bool>,
    how: Aggregation,
    norm: Normalizer,
) -> Tensor<B, 1> {
    let masked = per_token.mask_fill(mask.clone().bool_not(), 0.0);
    match how {
        Aggregation::TokenMean => masked.sum().div_scalar(norm.tokens.max(1) as f64),
        Aggregation::SequenceMean => {
            let counts = mask.float().sum_dim(1).clamp_min(1.0);
            (masked.sum_dim(1) / counts)
                .sum()
                .div_scalar(norm.sequences.max(1) as f64)
        }
        Aggregation::Constant(length) => masked
            .sum()
            .div_scalar((norm.sequences.max(1) * length) as f64),
    }
}

/// `ρ = exp(lp − old)`, the importance ratio of each token, with gradient through `lp`.
/// The log-ratio is clamped to `[−20, 20]` first (as the SDPO and verl code do), so one
/// token far off-policy cannot overflow.
pub fn importance_ratio<B: Backend>(lp: Tensor<B, 2>, old: Tensor<B, 2>) -> Tensor<B, 2> {
    (lp - old.detach()).clamp(-20.0, 20.0).exp()
}
