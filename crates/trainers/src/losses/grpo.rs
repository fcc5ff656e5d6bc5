//! GRPO: group-normalized advantages, the clipped surrogate and the k3 KL to a reference.
//! Sources: Shao et al. 2024 (DeepSeekMath), DAPO (clip-higher, token mean), Dr. GRPO
//! (no std, constant normalizer); TRL's `GRPOTrainer` for the defaults.

use burn::tensor::{Tensor, backend::Backend};
use opd_divergences::sampled::Estimator;

use super::importance_ratio;

/// Advantages of one rollout batch and how many groups carry no signal.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAdvantages {
    /// `A_i` per answer, in the batch's prompt-major order.
    pub advantages: Vec<f64>,
    /// Groups whose rewards are all equal (zero advantage: no gradient).
    pub zero_std_groups: usize,
    /// Number of groups.
    pub groups: usize,
}

/// `A_i = (r_i − mean_g r) / (std_g r + 1e-4)` within each group of `group` consecutive
/// answers, `std` the unbiased (n − 1) standard deviation as in TRL; with `scale = false`,
/// `A_i = r_i − mean_g r` (Dr. GRPO).
pub fn group_advantages(rewards: &[f64], group: usize, scale: bool) -> GroupAdvantages {
    let group = group.max(1);
    let mut advantages = Vec::with_capacity(rewards.len());
    let mut zero_std_groups = 0;
    for g in rewards.chunks(group) {
        let n = g.len() as f64;
        let mean = g.iter().sum::<f64>() / n;
        let var = if g.len() > 1 {
            g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        let std = var.sqrt();
        if g.iter().all(|&r| r == g[0]) {
            zero_std_groups += 1;
        }
        advantages.extend(g.iter().map(|r| {
            let centered = r - mean;
            if scale {
                centered / (std + 1e-4)
            } else {
                centered
            }
        }));
    }
    GroupAdvantages {
        advantages,
        zero_std_groups,
        groups: rewards.len().div_ceil(group),
    }
}

/// PPO's clipped surrogate per token:
/// `ℓ_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)`, `ρ_t = π_θ(ŷ_t)/π_old(ŷ_t)`.
/// Where the clip binds, the token has no gradient.
pub fn clipped_surrogate<B: Backend>(
    lp: Tensor<B, 2>,
    old: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
    epsilon_low: f64,
    epsilon_high: f64,
) -> Tensor<B, 2> {
    let ratio = importance_ratio(lp, old);
    let advantages = advantages.detach();
    let unclipped = ratio.clone() * advantages.clone();
    let clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * advantages;
    unclipped.min_pair(clipped).neg()
}

/// The k3 estimate of `KL(π_θ ‖ π_ref)` at each sampled token (Schulman's estimator, TRL's
/// `per_token_kl`): `e^{q} − q − 1`, `q = log π_ref(ŷ_t) − log π_θ(ŷ_t)`; non-negative.
pub fn k3_to_reference<B: Backend>(lp: Tensor<B, 2>, reference: Tensor<B, 2>) -> Tensor<B, 2> {
    // The divergences crate's k3 with r = lp − ref: e^{−r} − 1 + r = e^{q} − q − 1.
    Estimator::K3.estimate(lp, reference)
}
