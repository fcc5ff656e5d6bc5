//! The objectives, each a short function of per-token log-probs `[B, R]` (and teacher
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

/// `ρ = exp(lp − old)`, the importance ratio of each token, with gradient through `lp`.
/// The log-ratio is clamped to `[−20, 20]` first (as the SDPO and verl code do), so one
/// token far off-policy cannot overflow.
pub fn importance_ratio<B: Backend>(lp: Tensor<B, 2>, old: Tensor<B, 2>) -> Tensor<B, 2> {
    (lp - old.detach()).clamp(-20.0, 20.0).exp()
}
