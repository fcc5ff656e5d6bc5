//! Self-distillation losses (OPSD, SDFT, SDPO): a divergence to the prompt-conditioned
//! teacher at every response position, or its sampled-token form.

use burn::tensor::{Tensor, backend::Backend};
use opd_divergences::sampled::{reinforce_surrogate, token_advantage};

/// The sampled-token distillation loss (OPSD's alternative to the full JSD):
/// `ℓ_t = −sg(A_t) · log p_θ(ŷ_t)`, `A_t = log p_T(ŷ_t) − log p_θ(ŷ_t)`; its expected
/// gradient over `ŷ ~ p_θ` is the reverse KL's.
pub fn sampled_token<B: Backend>(lp: Tensor<B, 2>, teacher: Tensor<B, 2>) -> Tensor<B, 2> {
    reinforce_surrogate(lp.clone(), token_advantage(lp, teacher))
}

/// SDPO's off-policy weight: `min(sg ρ_t, clip)`, multiplied into each token's divergence
/// (the SDPO code's `is_clip`, 2 by default).
pub fn clipped_importance_weight<B: Backend>(
    lp: Tensor<B, 2>,
    old: Tensor<B, 2>,
    clip: f64,
) -> Tensor<B, 2> {
    super::importance_ratio(lp.detach(), old).clamp_max(clip)
}

/// The sampled-token distillation loss with a stated baseline:
/// `ℓ_t = −sg(log p_T(ŷ_t) − b_t) · log p_θ(ŷ_t)`; [`sampled_token`] is `b_t = log p_θ(ŷ_t)`,
/// `b_t = log π_old(ŷ_t)` gives Tinker's per-token advantage.
pub fn sampled_token_against<B: Backend>(
    lp: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    baseline: Tensor<B, 2>,
) -> Tensor<B, 2> {
    reinforce_surrogate(lp, token_advantage(baseline, teacher))
}
