//! Masks, per-token clipping and reductions of per-token values `[B, T]`: the one place a
//! per-token loss becomes a number, for the divergences and the trainers' objectives alike.

use burn::tensor::{Bool, ElementConversion, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::check;
use crate::error::{DivergenceError, Result};

/// How per-token values `x_{b,t}` with mask `m_{b,t}` become one number (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// `Σ_{b,t} m x / Σ_{b,t} m`: every token of the batch weighs the same (TRL, DAPO).
    #[default]
    TokenMean,
    /// `mean_b (Σ_t m x / Σ_t m)` over sequences with at least one token: every sequence
    /// weighs the same (original GRPO).
    SequenceMean,
    /// `Σ_{b,t} m x / (N_sequences · L)` with a constant `L` tokens per sequence (Dr. GRPO:
    /// no length bias).
    Constant(usize),
    /// `Σ_{b,t} m x`.
    Sum,
}

/// The counts of a whole batch a part of it is reduced against (see [`reduce_share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Counted tokens: `Σ_{b,t} m`.
    pub tokens: usize,
    /// Sequences with at least one counted token.
    pub sequences: usize,
}

/// Reduces per-token values `[B, T]` over the positions `mask` selects.
///
/// Errors when the shapes differ, the mask selects nothing or a constant length is 0.
pub fn reduce<B: Backend>(
    per_token: Tensor<B, 2>,
    mask: Tensor<B, 2, Bool>,
    reduction: Reduction,
) -> Result<Tensor<B, 1>> {
    check::same_shape("mask", &per_token.dims(), &mask.dims())?;
    check_reduction(reduction)?;
    if mask.clone().int().sum().into_scalar().elem::<i64>() == 0 {
        return Err(DivergenceError::EmptyMask);
    }
    Ok(reduce_unchecked(per_token, mask, reduction))
}

/// An error for a constant length of 0.
pub(crate) fn check_reduction(reduction: Reduction) -> Result<()> {
    if reduction == Reduction::Constant(0) {
        return Err(DivergenceError::InvalidParameter {
            name: "Reduction::Constant length",
            value: 0.0,
            expected: "a positive number of tokens per sequence",
        });
    }
    Ok(())
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
        Reduction::Constant(length) => {
            let present = mask.sum_dim(1).greater_elem(0.0).float().sum();
            masked.sum() / present.mul_scalar(length as f64)
        }
    }
}

/// The share of a part of a batch (a micro-batch) in the reduction of the whole, whose
/// counts are `whole`: token mean `Σ m x / N_tokens`; sequence mean
/// `Σ_b (Σ_t m x / Σ_t m) / N_sequences`; constant `Σ m x / (N_sequences · L)`; sum `Σ m x`.
/// The shares of the parts add up to the whole's reduction, so gradient accumulation over
/// micro-batches changes nothing but memory. Off-mask values are replaced by zero.
pub fn reduce_share<B: Backend>(
    per_token: Tensor<B, 2>,
    mask: Tensor<B, 2, Bool>,
    reduction: Reduction,
    whole: Counts,
) -> Tensor<B, 1> {
    let masked = per_token.mask_fill(mask.clone().bool_not(), 0.0);
    match reduction {
        Reduction::Sum => masked.sum(),
        Reduction::TokenMean => masked.sum().div_scalar(whole.tokens.max(1) as f64),
        Reduction::SequenceMean => {
            let counts = mask.float().sum_dim(1).clamp_min(1.0);
            (masked.sum_dim(1) / counts)
                .sum()
                .div_scalar(whole.sequences.max(1) as f64)
        }
        Reduction::Constant(length) => masked
            .sum()
            .div_scalar((whole.sequences.max(1) * length) as f64),
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
