//! Scoring given answers: the log-probability of every response token under a policy, from
//! one full forward over prompt + response (no cache), optionally with the top-k of each
//! position. It agrees with the log-probs recorded while sampling.

use burn::tensor::{Tensor, backend::Backend, s};
use opd_policy::Policy;

use crate::batch::RolloutBatch;
use crate::error::{Result, RolloutError};
use crate::generate::{check_prompts, left_padded};
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

/// The scores of one response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenScores {
    /// `log π(y_t | x, y_<t)` of each response token (temperature 1).
    pub logprobs: Vec<f32>,
    /// With `top_k > 0`: per position, the `k` most likely `(id, log π)`, most likely first.
    pub top_k: Vec<Vec<(u32, f32)>>,
}

/// Scores `responses[i]` after `prompts[i]`.
pub fn score<B: Backend, P: Policy<B>>(
    policy: &P,
    prompts: &[&[u32]],
    responses: &[&[u32]],
    options: ScoreOptions,
) -> Result<Vec<TokenScores>> {
    if prompts.len() != responses.len() {
        return Err(RolloutError::CountMismatch {
            prompts: prompts.len(),
            responses: responses.len(),
        });
    }
    let vocab = policy.vocab_size();
    let sequences: Vec<Vec<u32>> = prompts
        .iter()
        .zip(responses)
        .map(|(p, r)| [*p, *r].concat())
        .collect();
    let owned: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    check_prompts(&owned, vocab, policy.max_context())?;
    check_prompts(&sequences, vocab, policy.max_context() + 1)?;
    let device = policy.devices().into_iter().next().unwrap_or_default();
    let mut out = Vec::with_capacity(sequences.len());
    for start in (0..sequences.len()).step_by(options.micro_batch.max(1)) {
        let end = (start + options.micro_batch.max(1)).min(sequences.len());
        let rows: Vec<&[u32]> = sequences[start..end].iter().map(Vec::as_slice).collect();
        let (ids, padding) = left_padded::<B>(&rows, 0, &device);
        let hidden = policy.hidden(ids, &padding);
        for (k, i) in (start..end).enumerate() {
            let (prompt_len, response) = (prompts[i].len(), responses[i]);
            if response.is_empty() {
                out.push(TokenScores::default());
                continue;
            }
            let from = padding[k] + prompt_len - 1;
            let rows_hidden: Tensor<B, 3> =
                hidden
                    .clone()
                    .slice(s![k..k + 1, from..from + response.len(), ..]);
            let logits: Vec<f32> = policy
                .project(rows_hidden)
                .into_data()
                .convert::<f32>()
                .into_vec()
                .expect("f32 logits");
            out.push(score_rows(&logits, vocab, response, options.top_k));
        }
    }
    Ok(out)
}

/// Log-softmax at the given tokens (and the top-k) of `[len, V]` host logits.
fn score_rows(logits: &[f32], vocab: usize, tokens: &[u32], top_k: usize) -> TokenScores {
    let mut scores = TokenScores::default();
    for (row, &token) in logits.chunks_exact(vocab).zip(tokens) {
        let (lse, _) = log_sum_exp(row);
        scores
            .logprobs
            .push((row[token as usize] as f64 - lse) as f32);
        if top_k > 0 {
            let mut ids: Vec<u32> = (0..vocab as u32).collect();
            let k = top_k.min(vocab);
            let order = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
            ids.select_nth_unstable_by(k - 1, order);
            ids.truncate(k);
            ids.sort_unstable_by(order);
            scores.top_k.push(
                ids.iter()
                    .map(|&id| (id, (row[id as usize] as f64 - lse) as f32))
                    .collect(),
            );
        }
    }
    scores
}

/// Scores every sample of a rollout under `policy` (the sampling policy, a teacher, …).
pub fn score_batch<B: Backend, P: Policy<B>>(
    policy: &P,
    batch: &RolloutBatch,
    options: ScoreOptions,
) -> Result<Vec<TokenScores>> {
    let prompts: Vec<&[u32]> = batch.samples.iter().map(|s| batch.prompt_of(s)).collect();
    let responses: Vec<&[u32]> = batch
        .samples
        .iter()
        .map(|s| s.response_ids.as_slice())
        .collect();
    score(policy, &prompts, &responses, options)
}
