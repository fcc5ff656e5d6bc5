//! The OpenAI-compatible completions endpoint as vLLM serves it, used for prompt log-probs:
//! `POST /v1/completions` with `prompt` as token ids, `max_tokens` 0 or 1, `echo` and
//! `prompt_logprobs = k`. Each choice then carries `prompt_logprobs`: one entry per prompt
//! token, `null` for the first, else an object from token id (as a string) to
//! `{logprob, rank, decoded_token}` holding the prompt's own token and the `k` most likely.
//!
//! The format followed is that of vLLM 0.6 to 0.11 (`CompletionResponseChoice.prompt_logprobs`);
//! SGLang's OpenAI server answers the same fields. vLLM computes prompt log-probs from the raw
//! logits (temperature 1), and caps `k` at its `--max-logprobs` (20 by default).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::protocol::{Scored, Sequence};

/// `POST /v1/completions` for prompt log-probs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// The served model's name (vLLM requires it; `opd serve` ignores it).
    #[serde(default)]
    pub model: String,
    /// Token ids: one prompt, or several.
    pub prompt: Prompt,
    /// Tokens to generate: 0 or 1 (only the prompt is scored).
    #[serde(default)]
    pub max_tokens: usize,
    /// Return the prompt with the choice (vLLM needs it with `max_tokens = 0`).
    #[serde(default)]
    pub echo: bool,
    /// The `k` most likely tokens at every prompt position, besides the prompt's own.
    pub prompt_logprobs: usize,
    /// Sampling temperature (the prompt's log-probs are at temperature 1 regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// One prompt or several, as token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(Vec<u32>),
    /// Several prompts, one choice each.
    Many(Vec<Vec<u32>>),
}

impl Prompt {
    /// The prompts.
    pub fn into_prompts(self) -> Vec<Vec<u32>> {
        match self {
            Self::One(ids) => vec![ids],
            Self::Many(all) => all,
        }
    }
}

/// A token's log-prob at a prompt position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptLogprob {
    /// `log p(token | prompt before it)`.
    pub logprob: f32,
    /// 1 for the most likely token.
    #[serde(default)]
    pub rank: Option<usize>,
    /// The token's text.
    #[serde(default)]
    pub decoded_token: Option<String>,
}

/// One choice of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Which prompt.
    pub index: usize,
    /// The generated text (empty: nothing is generated).
    #[serde(default)]
    pub text: String,
    /// Per prompt position: `null` first, then token id → log-prob.
    pub prompt_logprobs: Vec<Option<BTreeMap<String, PromptLogprob>>>,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// `cmpl-…`.
    #[serde(default)]
    pub id: String,
    /// `text_completion`.
    #[serde(default)]
    pub object: String,
    /// The model's name.
    #[serde(default)]
    pub model: String,
    /// One per prompt.
    pub choices: Vec<Choice>,
}

/// `POST /detokenize`: the text of `tokens` (vLLM's tokenizer endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeRequest {
    /// The served model's name.
    #[serde(default)]
    pub model: String,
    /// The ids.
    pub tokens: Vec<u32>,
}

/// The answer to a [`DetokenizeRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    /// The text.
    pub prompt: String,
}

/// `GET /v1/models`: the served models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// `list`.
    #[serde(default)]
    pub object: String,
    /// The models.
    pub data: Vec<ModelCard>,
}

/// One served model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Its name, the `model` of requests.
    pub id: String,
    /// `model`.
    #[serde(default)]
    pub object: String,
    /// The longest prompt plus generation it takes.
    #[serde(default)]
    pub max_model_len: Option<usize>,
}

/// The ids whose text a client compares with the server's: `n` spread over the vocabulary.
pub fn probe_ids(vocab_size: usize, n: usize) -> Vec<u32> {
    let n = n.min(vocab_size).max(1);
    (0..n).map(|i| (i * vocab_size / n) as u32).collect()
}

/// The request scoring `sequences` (each prompt is context + response) with `top_k`.
pub fn request(model: &str, sequences: &[Sequence], top_k: usize) -> CompletionRequest {
    CompletionRequest {
        model: model.to_string(),
        prompt: Prompt::Many(
            sequences
                .iter()
                .map(|s| [s.context.as_slice(), s.response.as_slice()].concat())
                .collect(),
        ),
        max_tokens: 1,
        echo: true,
        prompt_logprobs: top_k,
        temperature: Some(1.0),
    }
}

/// The response tokens' scores of `sequence` from its choice: each token's own log-prob and,
/// with `top_k > 0`, the `top_k` most likely by rank. `None` when the choice lacks a position
/// or the token.
pub fn scored(choice: &Choice, sequence: &Sequence, top_k: usize) -> Option<Scored> {
    let start = sequence.context.len();
    let mut out = Scored {
        logprobs: Vec::with_capacity(sequence.response.len()),
        top_ids: Vec::new(),
        top_logprobs: Vec::new(),
        ranks: Vec::new(),
        full_logprobs: Vec::new(),
    };
    for (t, &token) in sequence.response.iter().enumerate() {
        let position = choice.prompt_logprobs.get(start + t)?.as_ref()?;
        out.logprobs.push(position.get(&token.to_string())?.logprob);
        if top_k > 0 {
            let mut ranked: Vec<(usize, u32, f32)> = position
                .iter()
                .filter_map(|(id, lp)| Some((lp.rank?, id.parse().ok()?, lp.logprob)))
                .filter(|(rank, _, _)| *rank <= top_k)
                .collect();
            ranked.sort_by_key(|(rank, id, _)| (*rank, *id));
            if ranked.len() < top_k {
                return None;
            }
            // The sampled token tied with the k-th shares its rank: keep the server's top k.
            ranked.truncate(top_k);
            out.top_ids
                .push(ranked.iter().map(|(_, id, _)| *id).collect());
            out.top_logprobs
                .push(ranked.iter().map(|(_, _, lp)| *lp).collect());
        }
    }
    Some(out)
}
