//! What a rollout returns: per sample the tokens, both log-probabilities of each token, why it
//! ended and its text; per batch the token counts and timing.

use std::time::Duration;

use opd_policy::SequenceBatch;

/// Why a sample ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced a stop token (EOS or one of `stop_token_ids`); the token ends the response.
    StopToken(u32),
    /// Its text reached a stop string; the text, the ids and the log-probs end before it.
    StopString(String),
    /// It reached `max_new_tokens` or the model's context.
    Length,
}

impl std::fmt::Display for FinishReason {
    /// `stop token 2`, `stop string "\n\n"`, `length`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StopToken(id) => write!(f, "stop token {id}"),
            Self::StopString(s) => write!(f, "stop string {s:?}"),
            Self::Length => write!(f, "length"),
        }
    }
}

/// One sampled answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index of its prompt in the input.
    pub prompt_index: usize,
    /// Its index among the `n` samples of that prompt.
    pub sample_index: usize,
    /// The generated token ids: a stop token included; with a stop string, only the tokens
    /// whose text lies before it (`text` is their decoding).
    pub response_ids: Vec<u32>,
    /// `log π(y_t | y_<t)` of each generated token under the policy at temperature 1, without
    /// truncation: what OPD's advantages and importance ratios need.
    pub logprobs: Vec<f32>,
    /// `log q(y_t | y_<t)` under the processed distribution the token was drawn from.
    pub sampling_logprobs: Vec<f32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// The decoded response ids, special tokens dropped.
    pub text: String,
}

/// Token counts and wall time of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RolloutStats {
    /// Prompt tokens processed (padding excluded), over all samples.
    pub prompt_tokens: usize,
    /// Tokens generated, over all samples.
    pub response_tokens: usize,
    /// Time of the prompt forward pass.
    pub prefill: Duration,
    /// Time of the token-by-token decoding.
    pub decode: Duration,
}

impl RolloutStats {
    /// Generated tokens per second of decoding.
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.response_tokens as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// The samples of a batch of prompts, prompt-major: sample `j` of prompt `i` is at `i·n + j`.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutBatch {
    /// The prompts' token ids.
    pub prompts: Vec<Vec<u32>>,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Counts and timing.
    pub stats: RolloutStats,
}

impl RolloutBatch {
    /// The prompt of a sample.
    pub fn prompt_of(&self, sample: &Sample) -> &[u32] {
        &self.prompts[sample.prompt_index]
    }

    /// The samples as a [`SequenceBatch`]: each sample's prompt as its context, its response
    /// ids as the response, in sample order. Swap the contexts with
    /// [`SequenceBatch::with_contexts`] to score the same tokens in a teacher's context.
    pub fn sequences(&self) -> opd_policy::Result<SequenceBatch> {
        SequenceBatch::new(
            self.samples
                .iter()
                .map(|s| self.prompt_of(s).to_vec())
                .collect(),
            self.samples
                .iter()
                .map(|s| s.response_ids.clone())
                .collect(),
        )
    }
}
