//! Scoring given responses: the log-probability of every response token of a
//! [`SequenceBatch`] under a policy, from one full forward over context + response (no cache),
//! optionally with the top-k of each position. The outputs have the batch's response layout
//! `[B, R]`, so scores of the same responses under a student and under a teacher with a longer
//! context line up token for token. They agree with the log-probs recorded while sampling.
//!
//! Scoring records no gradient: call it on a model of a plain backend (an autodiff model's
//! `valid()` copy), where the fast CPU kernels run.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use opd_divergences::host_values;
use opd_policy::{Policy, SequenceBatch};
use rayon::prelude::*;

use crate::error::{Result, RolloutError};
use crate::sampler::log_sum_exp;

/// How to score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreOptions {
    /// Sequences per forward pass: memory grows as `micro_batch · R · V` logits.
    pub micro_batch: usize,
    /// Also return the `k` most likely tokens of each position (0: none).
    pub top_k: usize,
    /// Temperature `τ` of the scored distribution, `log softmax(z / τ)`; 1 is the policy itself.
    pub temperature: f64,
    /// Also count each response token's rank over the whole vocabulary ([`Scores::ranks`]):
    /// one more pass over each position's logits, so off unless asked (a server reports it).
    pub ranks: bool,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            micro_batch: 4,
            top_k: 0,
            temperature: 1.0,
            ranks: false,
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
    /// With [`ScoreOptions::ranks`], the rank of each response token, `[B, R]`: `1 + |{v :
    /// log π(v) > log π(y_t)}|` over the whole vocabulary (1 for the most likely; ties share
    /// the better rank); 0 at padding positions.
    pub ranks: Option<Tensor<B, 2, Int>>,
}

/// The scores of one response, on the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenScores {
    /// `log π(y_t | x, y_<t)` of each response token (temperature 1).
    pub logprobs: Vec<f32>,
    /// With `top_k > 0`: per position, the `k` most likely `(id, log π)`, most likely first.
    pub top_k: Vec<Vec<(u32, f32)>>,
    /// With [`ScoreOptions::ranks`]: each response token's rank ([`Scores::ranks`]).
    pub ranks: Vec<u32>,
}

impl<B: Backend> Scores<B> {
    /// The scores of each row of `batch` on the host, cut to its response's length.
    pub fn to_rows(&self, batch: &SequenceBatch) -> Vec<TokenScores> {
        let width = batch.response_width();
        let logprobs: Vec<f32> = host_values(self.logprobs.clone());
        let top = self.top_k.as_ref().map(|top| {
            let k = top.ids.dims()[2];
            (
                k,
                host_ints(top.ids.clone()),
                host_values(top.log_probs.clone()),
            )
        });
        let ranks = self.ranks.clone().map(host_ints);
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
                let ranks = ranks.as_ref().map_or(Vec::new(), |r| {
                    positions.clone().map(|p| r[p] as u32).collect()
                });
                TokenScores {
                    logprobs: logprobs[positions].to_vec(),
                    top_k,
                    ranks,
                }
            })
            .collect()
    }
}

fn host_ints<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().into_vec().unwrap()
}

/// Scores every response token of `batch` under `policy` (the sampling policy, π_old, a
/// teacher in its own contexts, …), `options.micro_batch` rows per forward pass: `log
/// softmax(z / τ)` at each response token, and its top-k.
///
/// Errors when an id is outside the vocabulary, the rows do not fit the context, or the
/// temperature is not positive.
pub fn score<B: Backend, P: Policy<B>>(
    policy: &P,
    batch: &SequenceBatch,
    options: ScoreOptions,
) -> Result<Scores<B>> {
    batch.check(policy.vocab_size(), policy.max_context())?;
    score_by(batch, options, |rows| Ok(policy.response_logits(rows)?))
}

/// [`score`] with the logits of each micro-batch from `logits(rows)` (`[m, R_m, V]` in the
/// rows' own layout): for a teacher whose logits combine several forwards.
pub fn score_by<B: Backend>(
    batch: &SequenceBatch,
    options: ScoreOptions,
    mut logits: impl FnMut(&SequenceBatch) -> Result<Tensor<B, 3>>,
) -> Result<Scores<B>> {
    let tau = options.temperature;
    if !(tau.is_finite() && tau > 0.0) {
        return Err(RolloutError::InvalidParameter {
            field: "temperature",
            value: tau.to_string(),
            expected: "finite and > 0 for scoring",
        });
    }
    let (rows, width) = (batch.len(), batch.response_width());
    let micro = options.micro_batch.max(1);
    let mut logprobs = vec![0.0f32; rows * width];
    let (mut k, mut top_ids, mut top_lps, mut device) = (0, Vec::new(), Vec::new(), None);
    let mut ranks = vec![0i64; rows * width];
    for start in (0..rows).step_by(micro) {
        let end = (start + micro).min(rows);
        if batch.responses()[start..end].iter().all(Vec::is_empty) {
            continue;
        }
        let sub = batch.rows(start..end)?;
        let out = logits(&sub)?;
        let [_, sub_width, vocab] = out.dims();
        if device.is_none() {
            k = options.top_k.min(vocab);
            top_ids = vec![0i64; rows * width * k];
            top_lps = vec![f32::NEG_INFINITY; rows * width * k];
            device = Some(out.device());
        }
        let values = host_values(out);
        // Every response position of the micro-batch, scored in parallel.
        let positions: Vec<(usize, usize, usize)> = (start..end)
            .enumerate()
            .flat_map(|(row_in_micro, b)| {
                let len = batch.responses()[b].len();
                (0..len).map(move |t| (row_in_micro, b, t))
            })
            .collect();
        let scored: Vec<Scored> = positions
            .into_par_iter()
            .map(|(row_in_micro, b, t)| {
                let token = batch.responses()[b][t] as usize;
                let at = (row_in_micro * sub_width + t) * vocab;
                let row = &values[at..at + vocab];
                let scaled: Vec<f32>;
                let row = if tau == 1.0 {
                    row
                } else {
                    scaled = row.iter().map(|&z| (z as f64 / tau) as f32).collect();
                    &scaled
                };
                let (lse, _) = log_sum_exp(row);
                let top = top_indices(row, k)
                    .into_iter()
                    .map(|id| (id, (row[id] as f64 - lse) as f32))
                    .collect();
                let rank = match options.ranks {
                    false => 0,
                    true => 1 + row.iter().filter(|&&z| z > row[token]).count(),
                };
                (b * width + t, (row[token] as f64 - lse) as f32, top, rank)
            })
            .collect();
        for (p, logprob, top, rank) in scored {
            logprobs[p] = logprob;
            ranks[p] = rank as i64;
            for (j, (id, lp)) in top.into_iter().enumerate() {
                top_ids[p * k + j] = id as i64;
                top_lps[p * k + j] = lp;
            }
        }
    }
    let device = device.unwrap_or_default();
    let top_k = (k > 0).then(|| TopK {
        ids: Tensor::from_data(TensorData::new(top_ids, [rows, width, k]), &device),
        log_probs: Tensor::from_data(TensorData::new(top_lps, [rows, width, k]), &device),
    });
    Ok(Scores {
        logprobs: Tensor::from_data(TensorData::new(logprobs, [rows, width]), &device),
        top_k,
        ranks: options
            .ranks
            .then(|| Tensor::from_data(TensorData::new(ranks, [rows, width]), &device)),
    })
}

/// One position's scores: its flat index `b·R + t`, `log π(y_t)`, its top-k `(id, log π)`,
/// and (when asked) the token's rank.
type Scored = (usize, f32, Vec<(usize, f32)>, usize);

/// Indices of the `k` largest entries of `row`, largest first.
fn top_indices(row: &[f32], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let mut ids: Vec<usize> = (0..row.len()).collect();
    let order = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]);
    ids.select_nth_unstable_by(k - 1, order);
    ids.truncate(k);
    ids.sort_unstable_by(order);
    ids
}
