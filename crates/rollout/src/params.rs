//! Sampling parameters.

use serde::{Deserialize, Serialize};

use crate::error::{Result, RolloutError};

/// How tokens are drawn. The logits are processed in this order: temperature, top-k, top-p,
/// min-p, each on the distribution the previous step left:
///
/// ```text
/// q(y) ∝ exp(l_y / τ)                       τ = temperature (τ = 0: greedy)
/// keep the k most likely                    top_k
/// keep the smallest most-likely set with mass ≥ p         top_p
/// keep y with q(y) ≥ min_p · max q          min_p
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature `τ ≥ 0`; 0 is greedy (argmax, ties to the lowest id).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`k ≥ 1`); `None` keeps all.
    pub top_k: Option<usize>,
    /// Nucleus mass in `(0, 1]`; 1 keeps all.
    pub top_p: f64,
    /// Relative probability floor in `[0, 1)`; 0 keeps all.
    pub min_p: f64,
    /// Most tokens generated per sample.
    pub max_new_tokens: usize,
    /// Samples per prompt (`n ≥ 1`): a group for GRPO.
    pub n: usize,
    /// Most rows (samples) prefilled and decoded together (`≥ 1`); more run in successive
    /// batches, with the same results (each row draws from its own stream), so memory stays
    /// bounded for any `n`.
    pub max_batch: usize,
    /// Token ids that end a sample besides the tokenizer's EOS (kept in the response).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end a sample, also when they span tokens (cut from the text).
    pub stop_strings: Vec<String>,
    /// Seed; sample `j` of a prompt draws from a stream keyed by `(seed, prompt, j)`, whatever
    /// else is in the batch.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            max_new_tokens: 256,
            n: 1,
            max_batch: 64,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_new_tokens,
            ..Self::default()
        }
    }

    /// Whether samples come from the model's own distribution (`τ = 1`, no truncation), the
    /// case in which sampled-token estimators (k1, k3, REINFORCE) are unbiased.
    pub fn is_unbiased(&self) -> bool {
        self.temperature == 1.0 && self.top_k.is_none() && self.top_p == 1.0 && self.min_p == 0.0
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, expected| {
            Err(RolloutError::InvalidParameter {
                field,
                value,
                expected,
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature",
                self.temperature.to_string(),
                "finite and ≥ 0",
            );
        }
        if self.top_k == Some(0) {
            return bad("top_k", "0".into(), "≥ 1 (or unset to keep all)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return bad("min_p", self.min_p.to_string(), "in [0, 1)");
        }
        if self.n == 0 {
            return bad("n", "0".into(), "≥ 1");
        }
        if self.max_batch == 0 {
            return bad("max_batch", "0".into(), "≥ 1");
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop_strings", "\"\"".into(), "non-empty strings");
        }
        Ok(())
    }
}
