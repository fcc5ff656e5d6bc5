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
use crate::row_summary::RowSummary;

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
