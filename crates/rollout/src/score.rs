//! Scoring given responses: the log-probability of every response token of a
//! [`SequenceBatch`] under a policy, from one full forward over context + response (no cache),
//! optionally with the top-k of each position. The outputs have the batch's response layout
//! `[B, R]`, so scores of the same responses under a student and under a teacher with a longer
//! context line up token for token. They agree with the log-probs recorded while sampling.
//!
//! Scoring records no gradient: call it on a model of a plain backend (an autodiff model's
//! `valid()` copy), where the fast CPU kernels run.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend, s};
use opd_policy::{Policy, SequenceBatch};

use crate::error::Result;
use crate::sampler::log_sum_exp;

/// How to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreOptions {
    /// Sequences per forward pass.
    pub micro_batch: usize,
    /// Also return the `k` most likely tokens of each position (0: none).
    pub top_k: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            micro_batch: 8,
            top_k: 0,
        }
    }
}

/// The `k` most likely tokens of each response position, most likely first.
#[derive(Debug, Clone)]
pub struct TopK<B: Backend> {
    /// Token ids `[B, R, k]`; 0 at padding positions.
    pub ids: Tensor<B, 3, Int>,
    /// Their log-probabilities `[B, R, k]` (temperature 1); −∞ at padding positions.
    pub log_probs: Tensor<B, 3>,
}

/// Scores of a batch's response tokens, in its `[B, R]` layout (see
/// [`SequenceBatch::response_mask`] for which positions count).
#[derive(Debug, Clone)]
pub struct Scores<B: Backend> {
    /// `log π(y_{b,t} | context_b, y_{b,<t})` at temperature 1, `[B, R]`; 0 at padding.
    pub logprobs: Tensor<B, 2>,
    /// With `top_k > 0`, the top-k of every position.
    pub top_k: Option<TopK<B>>,
}

/// The scores of one response, on the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenScores {
    /// `log π(y_t | x, y_<t)` of each response token (temperature 1).
    pub logprobs: Vec<f32>,
    /// With `top_k > 0`: per position, the `k` most likely `(id, log π)`, most likely first.
    pub top_k: Vec<Vec<(u32, f32)>>,
}

impl<B: Backend> Scores<B> {
    /// The scores of each row of `batch` on the host, cut to its response's length.
    pub fn to_rows(&self, batch: &SequenceBatch) -> Vec<TokenScores> {
        let width = batch.response_width();
        let logprobs: Vec<f32> = host(self.logprobs.clone());
        let top = self.top_k.as_ref().map(|top| {
            let k = top.ids.dims()[2];
            let ids: Vec<i64> = top
                .ids
                .clone()
                .into_data()
                .convert::<i64>()
                .into_vec()
                .unwrap();
            (k, ids, host(top.log_probs.clone()))
        });
        batch
            .responses()
            .iter()
            .enumerate()
            .map(|(b, response)| {
                let positions = b * width..b * width + response.len();
                let top_k = match &top {
                    Some((k, ids, lps)) => positions
                        .clone()
                        .map(|p| {
                            (p * k..(p + 1) * k)
                                .map(|j| (ids[j] as u32, lps[j]))
                                .collect()
                        })
                        .collect(),
                    None => Vec::new(),
                };
                TokenScores {
                    logprobs: logprobs[positions].to_vec(),
                    top_k,
                }
            })
            .collect()
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 values")
}

/// Scores every response token of `batch` under `policy` (the sampling policy, π_old, a
/// teacher in its own contexts, …), `options.micro_batch` rows per forward pass. Only the
/// response positions go through the output head, one row at a time, so memory stays at
/// `O(R · V)` beyond the forward.
///
/// Errors when an id is outside the vocabulary or the rows do not fit the context.
pub fn score<B: Backend, P: Policy<B>>(
    policy: &P,
    batch: &SequenceBatch,
    options: ScoreOptions,
) -> Result<Scores<B>> {
    let vocab = policy.vocab_size();
    batch.check(vocab, policy.max_context())?;
    let (rows, width) = (batch.len(), batch.response_width());
    let k = options.top_k.min(vocab);
    let mut logprobs = vec![0.0f32; rows * width];
    let mut top_ids = vec![0i64; rows * width * k];
    let mut top_lps = vec![f32::NEG_INFINITY; rows * width * k];
    let micro = options.micro_batch.max(1);
    for start in (0..rows).step_by(micro) {
        let end = (start + micro).min(rows);
        if batch.responses()[start..end].iter().all(Vec::is_empty) {
            continue;
        }
        let hidden = policy.response_hidden(&batch.rows(start..end)?)?;
        for (row_in_micro, b) in (start..end).enumerate() {
            let response = &batch.responses()[b];
            if response.is_empty() {
                continue;
            }
            let row_hidden =
                hidden
                    .clone()
                    .slice(s![row_in_micro..row_in_micro + 1, 0..response.len(), ..]);
            let logits = host(policy.project(row_hidden));
            for (t, (row, &token)) in logits.chunks_exact(vocab).zip(response).enumerate() {
                let p = b * width + t;
                let (lse, _) = log_sum_exp(row);
                logprobs[p] = (row[token as usize] as f64 - lse) as f32;
                if k > 0 {
                    for (j, id) in top_indices(row, k).into_iter().enumerate() {
                        top_ids[p * k + j] = id as i64;
                        top_lps[p * k + j] = (row[id] as f64 - lse) as f32;
                    }
                }
            }
        }
    }
    let device = policy.devices().into_iter().next().unwrap_or_default();
    let top_k = (k > 0).then(|| TopK {
        ids: Tensor::from_data(TensorData::new(top_ids, [rows, width, k]), &device),
        log_probs: Tensor::from_data(TensorData::new(top_lps, [rows, width, k]), &device),
    });
    Ok(Scores {
        logprobs: Tensor::from_data(TensorData::new(logprobs, [rows, width]), &device),
        top_k,
    })
}

/// Indices of the `k` largest entries of `row`, largest first.
fn top_indices(row: &[f32], k: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..row.len()).collect();
    let order = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]);
    ids.select_nth_unstable_by(k - 1, order);
    ids.truncate(k);
    ids.sort_unstable_by(order);
    ids
}
