//! The per-token losses behind the methods, each a short function of per-token log-probs `[B, R]` (and teacher
//! outputs) returning per-token losses `[B, R]`; [`opd_divergences::reduce_share`] turns them
//! into the scalar to differentiate.
//!
//! Notation: `lp = log π_θ(ŷ_t)` (with gradient), `old = log π_old(ŷ_t)` (the sampler's, no
//! gradient), `ρ = exp(lp − old)`, `teacher = log π_T(ŷ_t)`.

pub mod distill;
pub mod grpo;
pub mod opd;
pub mod sft;

use burn::tensor::{Tensor, backend::Backend};

/// Bound of the log importance ratio `|lp − old|` (as the SDPO and verl code clamp it), so one
/// token far off-policy cannot overflow `ρ`.
pub const MAX_LOG_RATIO: f32 = 20.0;

/// `clamp(lp − old, −MAX_LOG_RATIO, MAX_LOG_RATIO)`, with gradient through `lp` inside the
/// bounds.
pub fn log_ratio<B: Backend>(lp: Tensor<B, 2>, old: Tensor<B, 2>) -> Tensor<B, 2> {
    (lp - old.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
}

/// `ρ = exp(lp − old)`, the importance ratio of each token, with gradient through `lp`; the
/// log-ratio clamped by [`log_ratio`] first.
pub fn importance_ratio<B: Backend>(lp: Tensor<B, 2>, old: Tensor<B, 2>) -> Tensor<B, 2> {
    log_ratio(lp, old).exp()
}
