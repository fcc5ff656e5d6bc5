//! What to watch about a next-token distribution besides a loss: its entropy and its most
//! likely tokens, per row of logits, on the host.
//!
//! With `p = softmax(z / τ)` over a row of `V` logits:
//! `H = −Σ_v p(v) log p(v)` and the `k` tokens of largest `p`, most likely first, with their
//! `log p`. The CPU backend computes both in two passes over each row (a selection of the top
//! `k` in `O(V)` and a log-sum-exp), with no `[N, V]` temporary; other backends take
//! [`crate::generic::summarize_rows`], burn's `log_softmax` and `topk` (which sorts each row).

use burn::tensor::Tensor;

use crate::backend::DivergenceBackend;

/// Entropy and top-k of `softmax(z / τ)` at every row of `[N, V]` logits.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSummary {
    /// `H_n = −Σ_v p_n(v) log p_n(v)`, `[N]`.
    pub entropy: Vec<f32>,
    /// The `k` most likely token ids of each row, most likely first, `[N · k]` row-major
    /// (ties in any order).
    pub ids: Vec<i64>,
    /// `log p_n(id)` for those ids, `[N · k]`.
    pub log_probs: Vec<f32>,
    /// Tokens kept per row: the `k` asked for, at most `V`.
    pub k: usize,
}

/// The [`RowSummary`] of `softmax(logits / temperature)` over rows `[N, V]`, with the top
/// `k.min(V)` tokens of each row (`k = 0`: the entropy alone). No graph is recorded.
///
/// # Panics
/// When `temperature` is not positive (callers validate it with their options).
pub fn summarize<B: DivergenceBackend>(
    logits: Tensor<B, 2>,
    temperature: f64,
    k: usize,
) -> RowSummary {
    assert!(temperature > 0.0, "temperature {temperature} ≤ 0");
    let k = k.min(logits.dims()[1]);
    B::summarize_rows(logits.into_primitive().tensor(), temperature, k)
}
