//! # opd-rollout
//!
//! On-policy samples, natively: [`generate`] draws `n` answers per prompt from any
//! [`opd_policy::Policy`] with left-padded batches and the KV cache, records for every token
//! the policy's own log-probability (temperature 1, what OPD and importance ratios need) and
//! the log-probability under the processed distribution it was drawn from, and is
//! reproducible per row. [`RolloutBatch::sequences`] puts the samples in the shared
//! [`opd_policy::SequenceBatch`] layout, in which [`score()`] recomputes log-probs (and top-k)
//! of the responses under any policy and context, as `[B, R]` tensors.
//!
//! ```no_run
//! use burn::backend::Flex;
//! use opd_policy::Message;
//! use opd_rollout::{SamplingParams, generate};
//!
//! let (model, tokenizer) = opd_policy::load::<Flex>("models/SmolLM2-135M-Instruct.Q4_1.gguf", &Default::default())?;
//! let text = tokenizer.apply_chat_template(&[Message::user("Name a prime number.")], true)?;
//! let params = SamplingParams { temperature: 0.7, n: 8, max_new_tokens: 64, seed: 1, ..Default::default() };
//! let batch = generate(&model, &tokenizer, &[tokenizer.encode(&text)?], &params)?;
//! for sample in &batch.samples {
//!     println!("{:?}: {}", sample.finish_reason, sample.text);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod batch;
pub mod error;
mod generate;
pub mod params;
pub mod sampler;
pub mod score;
mod stop;

pub use batch::{FinishReason, RolloutBatch, RolloutStats, Sample};
pub use error::{Result, RolloutError};
pub use generate::{Progress, generate, generate_with_progress};
pub use params::SamplingParams;
pub use score::{ScoreOptions, Scores, TokenScores, TopK, score, score_by};
