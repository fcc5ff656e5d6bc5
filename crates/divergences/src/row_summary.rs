//! What [`crate::summarize`] reports of each row of logits.

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
