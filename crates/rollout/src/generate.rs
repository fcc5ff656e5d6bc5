//! Batched generation: left-padded prompts, one prefill, then token-by-token decoding through
//! the KV cache; finished rows leave the batch.

use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend, s};
use opd_policy::{ChatTokenizer, Policy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::batch::{FinishReason, RolloutBatch, RolloutStats, Sample};
use crate::error::{Result, RolloutError};
use crate::params::SamplingParams;
use crate::sampler::{Draw, draw};
use crate::stop::{Finish, StopConditions};

/// A row in flight.
struct Row {
    prompt_index: usize,
    sample_index: usize,
    rng: ChaCha8Rng,
    response: Vec<u32>,
    logprobs: Vec<f32>,
    sampling_logprobs: Vec<f32>,
    finished: Option<Finish>,
}

/// The random stream of sample `j` of a prompt: a function of `(seed, prompt tokens, j)` only,
/// so a row draws the same tokens whatever else is in the batch and wherever it sits. (The
/// same prompt twice in one call therefore repeats its samples: ask for `n` instead.)
fn row_rng(seed: u64, prompt: &[u32], sample: usize) -> ChaCha8Rng {
    // FNV-1a over the token ids: stable across platforms and Rust versions.
    let hash = prompt.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
        t.to_le_bytes()
            .iter()
            .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ hash);
    rng.set_stream(sample as u64);
    rng
}

/// Checks prompts against the model: non-empty, in the vocabulary, shorter than the context.
pub(crate) fn check_prompts(prompts: &[Vec<u32>], vocab: usize, context: usize) -> Result<()> {
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(RolloutError::EmptyPrompt { index });
        }
        if prompt.len() >= context {
            return Err(RolloutError::PromptTooLong {
                index,
                len: prompt.len(),
                context,
            });
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(RolloutError::TokenOutOfVocabulary { index, id, vocab });
        }
    }
    Ok(())
}

/// Token ids `[rows, width]` of left-padded sequences, and each row's padding.
pub(crate) fn left_padded<B: Backend>(
    rows: &[&[u32]],
    pad: u32,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Vec<usize>) {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let padding: Vec<usize> = rows.iter().map(|r| width - r.len()).collect();
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| {
            std::iter::repeat_n(pad as i64, width - r.len()).chain(r.iter().map(|&t| t as i64))
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(ids, [rows.len(), width]), device),
        padding,
    )
}

/// Next-token logits of the last slot of each row, on the host, `[rows][V]` flattened.
fn last_logits<B: Backend, P: Policy<B>>(policy: &P, hidden: Tensor<B, 3>) -> Vec<f32> {
    let [rows, len, d] = hidden.dims();
    let last = hidden.slice(s![.., len - 1..len, ..]).reshape([rows, 1, d]);
    policy
        .project(last)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 logits")
}

/// Samples `params.n` answers to each prompt (token ids, e.g. a rendered chat template).
///
/// All rows are left-padded into one batch and prefilled together; then each step feeds every
/// unfinished row its last token through the KV cache. Rows that finish leave the batch. The
/// tokenizer supplies EOS, the padding id and the text of the answers.
pub fn generate<B: Backend, P: Policy<B>>(
    policy: &P,
    tokenizer: &ChatTokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> Result<RolloutBatch> {
    generate_with_progress(policy, tokenizer, prompts, params, |_: Progress| {})
}

/// What [`generate_with_progress`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A batch of rows is about to be prefilled: `tokens` prompt tokens (left padding
    /// included), the slow part of a long prompt.
    Prefill {
        /// Tokens in the prefill.
        tokens: usize,
    },
    /// A decoding step drew one token for each row still running.
    Decoded {
        /// Tokens generated so far, over all rows.
        generated: usize,
        /// The step's `(prompt_index, sample_index, token)` of each row that drew one (a token
        /// that a stop condition later cuts is included: streaming must hold back what a stop
        /// string might remove).
        tokens: &'a [(usize, usize, u32)],
    },
}

/// [`generate`], calling `progress` before each prefill and after each decoding step (for
/// progress bars and streaming).
pub fn generate_with_progress<B: Backend, P: Policy<B>>(
    policy: &P,
    tokenizer: &ChatTokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    mut progress: impl FnMut(Progress),
) -> Result<RolloutBatch> {
    params.validate()?;
    let (vocab, context) = (policy.vocab_size(), policy.max_context());
    check_prompts(prompts, vocab, context)?;
    if params.temperature > 0.0 && !params.is_unbiased() {
        tracing::debug!(
            "sampling with temperature {}, top_k {:?}, top_p {}, min_p {}: sampled-token \
             estimators of the policy's KL are biased; use `sampling_logprobs` for importance \
             ratios",
            params.temperature,
            params.top_k,
            params.top_p,
            params.min_p
        );
    }
    let mut stop_tokens = tokenizer.special.eos.clone();
    stop_tokens.extend(&params.stop_token_ids);
    let stop = StopConditions {
        tokens: stop_tokens,
        strings: &params.stop_strings,
        max_new_tokens: params.max_new_tokens,
        context,
    };
    let mut rows: Vec<Row> = (0..prompts.len())
        .flat_map(|i| (0..params.n).map(move |j| (i, j)))
        .map(|(i, j)| Row {
            prompt_index: i,
            sample_index: j,
            rng: row_rng(params.seed, &prompts[i], j),
            response: Vec::new(),
            logprobs: Vec::new(),
            sampling_logprobs: Vec::new(),
            finished: None,
        })
        .collect();
    let mut stats = RolloutStats {
        prompt_tokens: rows.iter().map(|r| prompts[r.prompt_index].len()).sum(),
        ..RolloutStats::default()
    };
    if params.max_new_tokens == 0 {
        return Ok(finish(prompts, rows, stats));
    }
    let mut generated = 0;
    for chunk in rows.chunks_mut(params.max_batch) {
        let mut chunk = Chunk {
            prompts,
            rows: chunk,
            stop: &stop,
        };
        chunk.run(policy, tokenizer, params, &mut stats, &mut |event| {
            progress(match event {
                Progress::Decoded {
                    generated: tokens,
                    tokens: drawn,
                } => Progress::Decoded {
                    generated: generated + tokens,
                    tokens: drawn,
                },
                prefill => prefill,
            })
        })?;
        generated += chunk.rows.iter().map(|r| r.response.len()).sum::<usize>();
    }
    stats.response_tokens = rows.iter().map(|r| r.response.len()).sum();
    Ok(finish(prompts, rows, stats))
}

/// Rows that are prefilled and decoded together (at most `max_batch` of them).
struct Chunk<'a, 'r> {
    prompts: &'a [Vec<u32>],
    rows: &'r mut [Row],
    stop: &'a StopConditions<'a>,
}

impl Chunk<'_, '_> {
    /// One prefill of the chunk's prompts, then token-by-token decoding through the KV cache
    /// until every row finishes; `progress` before the prefill and after each step (with the
    /// chunk's count).
    fn run<B: Backend, P: Policy<B>>(
        &mut self,
        policy: &P,
        tokenizer: &ChatTokenizer,
        params: &SamplingParams,
        stats: &mut RolloutStats,
        progress: &mut impl FnMut(Progress),
    ) -> Result<()> {
        let (vocab, context) = (policy.vocab_size(), policy.max_context());
        let known_tokens = tokenizer.vocab_size();
        let device = policy.devices().into_iter().next().unwrap_or_default();
        let started = Instant::now();
        let inputs: Vec<&[u32]> = self
            .rows
            .iter()
            .map(|r| self.prompts[r.prompt_index].as_slice())
            .collect();
        let (ids, padding) = left_padded::<B>(&inputs, tokenizer.pad_id(), &device);
        progress(Progress::Prefill {
            tokens: ids.dims().iter().product(),
        });
        let mut cache = policy.new_cache(padding);
        cache.reserve((ids.dims()[1] + params.max_new_tokens).min(context));
        let mut logits = last_logits(policy, policy.hidden_cached(ids, &mut cache));
        stats.prefill += started.elapsed();
        let started = Instant::now();
        // `active[k]` is the row in slot `k` of the cache.
        let mut active: Vec<usize> = (0..self.rows.len()).collect();
        let mut generated = 0;
        loop {
            if let Some(k) = logits
                .chunks_exact(vocab)
                .position(|row| row.iter().any(|v| !v.is_finite()))
            {
                let row = &self.rows[active[k]];
                return Err(RolloutError::NonFiniteLogits {
                    prompt: row.prompt_index,
                    sample: row.sample_index,
                    step: row.response.len(),
                });
            }
            let draws: Vec<Draw> = active
                .iter()
                .zip(logits.chunks_exact(vocab))
                .map(|(&r, row_logits)| (self.rows[r].rng.random::<f64>(), row_logits))
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|(u, row_logits)| draw(row_logits, params, u))
                .collect();
            let mut drawn = Vec::with_capacity(active.len());
            for (&r, d) in active.iter().zip(&draws) {
                let row = &mut self.rows[r];
                if d.token as usize >= known_tokens {
                    return Err(RolloutError::UnknownToken {
                        prompt: row.prompt_index,
                        sample: row.sample_index,
                        step: row.response.len(),
                        token: d.token,
                        tokens: known_tokens,
                    });
                }
                drawn.push((row.prompt_index, row.sample_index, d.token));
                row.response.push(d.token);
                row.logprobs.push(d.logprob);
                row.sampling_logprobs.push(d.sampling_logprob);
                row.finished = self.stop.check(
                    tokenizer,
                    self.prompts[row.prompt_index].len(),
                    &row.response,
                )?;
            }
            generated += active.len();
            progress(Progress::Decoded {
                generated,
                tokens: &drawn,
            });
            let keep: Vec<usize> = (0..active.len())
                .filter(|&k| self.rows[active[k]].finished.is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                cache.retain_rows(&keep);
                active = keep.iter().map(|&k| active[k]).collect();
            }
            let next: Vec<i64> = active
                .iter()
                .map(|&r| *self.rows[r].response.last().unwrap() as i64)
                .collect();
            let ids = Tensor::from_data(TensorData::new(next, [active.len(), 1]), &device);
            logits = last_logits(policy, policy.hidden_cached(ids, &mut cache));
        }
        stats.decode += started.elapsed();
        Ok(())
    }
}

/// Packs finished rows into a batch, each response cut to the tokens its finish keeps.
fn finish(prompts: &[Vec<u32>], rows: Vec<Row>, stats: RolloutStats) -> RolloutBatch {
    let samples = rows
        .into_iter()
        .map(|mut row| {
            let finish = row.finished.unwrap_or(Finish {
                reason: FinishReason::Length,
                keep: 0,
                text: String::new(),
            });
            row.response.truncate(finish.keep);
            row.logprobs.truncate(finish.keep);
            row.sampling_logprobs.truncate(finish.keep);
            Sample {
                prompt_index: row.prompt_index,
                sample_index: row.sample_index,
                response_ids: row.response,
                logprobs: row.logprobs,
                sampling_logprobs: row.sampling_logprobs,
                finish_reason: finish.reason,
                text: finish.text,
            }
        })
        .collect();
    RolloutBatch {
        prompts: prompts.to_vec(),
        samples,
        stats,
    }
}
