//! On-policy distillation from a teacher, in the forms of "How to Use Privileged Information
//! in RL: On-policy Distillation" (the surrogate with a trust region) and of Tinker / slime
//! (a per-token advantage trained with importance sampling).

use burn::tensor::{Tensor, backend::Backend};

use super::importance_ratio;

/// The OPD surrogate per token:
/// `ℓ_t = ρ_t (log π_θ(ŷ_t) − log π_T(ŷ_t)) + β_tr (ρ_t − 1 − log ρ_t)`.
/// The first term is the importance-weighted reverse KL to the teacher; the second is the k3
/// estimate of the forward-KL trust region `KL(π_old ‖ π_θ)` at tokens drawn from `π_old`
/// (zero, with zero gradient, while `π_θ = π_old`).
pub fn surrogate<B: Backend>(
    lp: Tensor<B, 2>,
    old: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    trust_region_beta: f64,
) -> Tensor<B, 2> {
    let log_ratio = super::log_ratio(lp.clone(), old.clone());
    let ratio = importance_ratio(lp.clone(), old);
    let reverse_kl = ratio.clone() * (lp - teacher.detach());
    let trust_region = ratio - 1.0 - log_ratio;
    reverse_kl + trust_region.mul_scalar(trust_region_beta)
}

/// Per-token distillation advantages of one row, on the host:
/// `A_t = Σ_{s ≥ t} γ^{s−t} (teacher_s − old_s)` over the row's `len` tokens (`γ = 0`:
/// `A_t = teacher_t − old_t`, the negated per-token reverse KL).
pub fn advantages(old: &[f32], teacher: &[f32], discount: f64) -> Vec<f64> {
    let mut out = vec![0.0; old.len()];
    let mut running = 0.0;
    for t in (0..old.len()).rev() {
        running = (teacher[t] - old[t]) as f64 + discount * running;
        out[t] = running;
    }
    out
}

/// The importance-sampled policy-gradient loss per token (Tinker's `importance_sampling`):
/// `ℓ_t = −ρ_t A_t`, gradient `−ρ_t A_t ∇ log π_θ(ŷ_t)`.
pub fn importance_weighted<B: Backend>(
    lp: Tensor<B, 2>,
    old: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
) -> Tensor<B, 2> {
    (importance_ratio(lp, old) * advantages.detach()).neg()
}

/// A single-sample estimate of the trust region `KL(π_old ‖ π_θ)` at each token drawn from
/// `π_old`, with gradient through `lp`; with `log ρ_t = lp − old` (clamped to `[−20, 20]`):
/// `k1 = −log ρ_t`, `k2 = (log ρ_t)²/2`, `k3 = ρ_t − 1 − log ρ_t` (the surrogate's own term).
/// `k1` and `k3` are unbiased; `k3` and `k2` are non-negative.
pub fn trust_region<B: Backend>(
    lp: Tensor<B, 2>,
    old: Tensor<B, 2>,
    estimator: opd_divergences::sampled::Estimator,
) -> Tensor<B, 2> {
    use opd_divergences::sampled::Estimator;
    let log_ratio = super::log_ratio(lp, old);
    match estimator {
        Estimator::K1 => log_ratio.neg(),
        Estimator::K2 => log_ratio.square().mul_scalar(0.5),
        Estimator::K3 => log_ratio.clone().exp() - 1.0 - log_ratio,
    }
}
