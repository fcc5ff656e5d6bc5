//! Masks, per-token clipping and reductions of per-token values `[B, T]`.

use burn::tensor::{Bool, ElementConversion, Tensor, backend::Backend};

use crate::check;
use crate::error::{DivergenceError, Result};

/// How per-token values `x_{b,t}` with mask `m_{b,t}` become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// `Σ_{b,t} m x / Σ_{b,t} m`: every token of the batch weighs the same (TRL, DAPO).
    #[default]
    TokenMean,
    /// `mean_b (Σ_t m x / Σ_t m)` over sequences with at least one token: every sequence
    /// weighs the same (original GRPO).
    SequenceMean,
    /// `Σ_{b,t} m x`.
    Sum,
}

/// Reduces per-token values `[B, T]` over the positions `mask` selects.
///
/// Errors when the shapes differ or the mask selects nothing.
pub fn reduce<B: Backend>(
    per_token: Tensor<B, 2>,
    mask: Tensor<B, 2, Bool>,
    reduction: Reduction,
) -> Result<Tensor<B, 1>> {
    check::same_shape("mask", &per_token.dims(), &mask.dims())?;
    if mask.clone().int().sum().into_scalar().elem::<i64>() == 0 {
        return Err(DivergenceError::EmptyMask);
    }
    Ok(reduce_unchecked(per_token, mask, reduction))
}

/// [`reduce`] for a mask already known to select something. Off-mask values are replaced by
/// zero (not multiplied by it), so padding holding NaN cannot leak in.
pub(crate) fn reduce_unchecked<B: Backend>(
    per_token: Tensor<B, 2>,
    mask: Tensor<B, 2, Bool>,
    reduction: Reduction,
) -> Tensor<B, 1> {
    let masked = per_token.mask_fill(mask.clone().bool_not(), 0.0);
    let mask = mask.float();
    match reduction {
        Reduction::Sum => masked.sum(),
        Reduction::TokenMean => masked.sum() / mask.sum(),
        Reduction::SequenceMean => {
            let counts = mask.sum_dim(1);
            let present = counts.clone().greater_elem(0.0).float();
            let per_sequence = masked.sum_dim(1) / counts.clamp_min(1.0);
            (per_sequence * present.clone()).sum() / present.sum()
        }
    }
}

/// Per-token clipping (OPSD's `jsd_token_clip`): `min(x, max)`. Positions above `max` get
/// no gradient, so one runaway token cannot dominate a batch.
pub fn clip_per_token<B: Backend, const D: usize>(
    per_token: Tensor<B, D>,
    max: f64,
) -> Result<Tensor<B, D>> {
    Ok(per_token.clamp_max(check::positive("token clip", max)?))
}
