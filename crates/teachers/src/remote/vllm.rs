//! The OpenAI-compatible completions endpoint as vLLM serves it, used for prompt log-probs:
//! `POST /v1/completions` with `prompt` as token ids, `max_tokens` 0 or 1, `echo` and
//! `prompt_logprobs = k`. Each choice then carries `prompt_logprobs`: one entry per prompt
//! token, `null` for the first, else an object from token id (as a string) to
//! `{logprob, rank, decoded_token}` holding the prompt's own token and the `k` most likely.
//!
//! The fields are those of vLLM's `CompletionRequest`, `CompletionResponse`,
//! `CompletionResponseChoice`, `UsageInfo` and `Logprob` (`vllm/entrypoints/openai/`, 0.6 to
//! 0.11 and later; later versions add fields, all `null` unless asked for); SGLang's OpenAI
//! server answers the same. In vLLM every entry has an integer rank (1 for the most likely;
//! the prompt's own token its true rank over the vocabulary, `1 +` the tokens more likely), a
//! log-prob of `-inf` is sent as `-9999.0`, prompt log-probs come from the raw logits
//! (temperature 1), and `k` is capped by `--max-logprobs` (20 by default; `-1` asks for the
//! whole vocabulary).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::protocol::{Scored, Sequence};

/// `POST /v1/completions` for prompt log-probs (the fields a scoring client sends; others are
/// ignored, as vLLM ignores fields it does not know).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// The served model's name (vLLM requires it; `opd serve` ignores it).
    #[serde(default)]
    pub model: String,
    /// Token ids: one prompt, or several.
    pub prompt: Prompt,
    /// Tokens to generate (vLLM's default when absent: 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Return the prompt with the choice (vLLM needs it with `max_tokens = 0`).
    #[serde(default)]
    pub echo: bool,
    /// The `k` most likely tokens at every prompt position, besides the prompt's own; `-1` for
    /// the whole vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<i64>,
    /// Log-probs of the generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<i64>,
    /// Choices per prompt (vLLM's default: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Stream the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
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

/// A token's log-prob at a prompt position (vLLM's `Logprob`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptLogprob {
    /// `log p(token | prompt before it)`; `-9999.0` for `-inf`.
    pub logprob: f32,
    /// 1 for the most likely token.
    #[serde(default)]
    pub rank: Option<usize>,
    /// The token's text.
    #[serde(default)]
    pub decoded_token: Option<String>,
}

/// One choice of the answer (vLLM's `CompletionResponseChoice`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Which prompt.
    pub index: usize,
    /// The generated text.
    #[serde(default)]
    pub text: String,
    /// The generated tokens' log-probs (`null`: none asked for).
    #[serde(default)]
    pub logprobs: Option<serde_json::Value>,
    /// Why generation stopped (`length`).
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The stop string or token that ended generation (`null` otherwise).
    #[serde(default)]
    pub stop_reason: Option<serde_json::Value>,
    /// The generated ids, when asked for (`return_token_ids`).
    #[serde(default)]
    pub token_ids: Option<Vec<u32>>,
    /// Per prompt position: `null` first, then token id → log-prob.
    pub prompt_logprobs: Vec<Option<BTreeMap<String, PromptLogprob>>>,
    /// The prompt's ids, when asked for (`return_token_ids`).
    #[serde(default)]
    pub prompt_token_ids: Option<Vec<u32>>,
}

/// Tokens counted for an answer (vLLM's `UsageInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, over every prompt.
    pub prompt_tokens: usize,
    /// Prompt and generated tokens.
    pub total_tokens: usize,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: Option<usize>,
    /// Details of the prompt tokens (`cached_tokens`), when known.
    #[serde(default)]
    pub prompt_tokens_details: Option<serde_json::Value>,
}

/// The answer (vLLM's `CompletionResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// `cmpl-…`.
    #[serde(default)]
    pub id: String,
    /// `text_completion`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model's name.
    #[serde(default)]
    pub model: String,
    /// One per prompt.
    pub choices: Vec<Choice>,
    /// OpenAI's service tier (`null`).
    #[serde(default)]
    pub service_tier: Option<String>,
    /// OpenAI's system fingerprint (`null`).
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    /// Tokens counted.
    #[serde(default)]
    pub usage: Option<Usage>,
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

/// One served model (vLLM's `ModelCard`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Its name, the `model` of requests.
    pub id: String,
    /// `model`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Who serves it (`vllm`; `opd`).
    #[serde(default)]
    pub owned_by: String,
    /// The model it was made from (vLLM: its path or hub name; `opd serve`: its served name).
    #[serde(default)]
    pub root: Option<String>,
    /// The model an adapter applies to (`null`).
    #[serde(default)]
    pub parent: Option<String>,
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
        max_tokens: Some(1),
        echo: true,
        prompt_logprobs: Some(top_k as i64),
        logprobs: None,
        n: None,
        stream: None,
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
