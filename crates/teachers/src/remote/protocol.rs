//! opd's scoring protocol over HTTP (JSON), spoken by `opd serve` and the [`super::Remote`]
//! teacher.
//!
//! - `GET /v1/model` → [`ModelInfo`]: the vocabulary's identity (size, special ids, a CRC-32
//!   of the token table), so a client refuses a teacher with another vocabulary before it
//!   trains.
//! - `POST /v1/score` with a [`ScoreRequest`] → [`ScoreResponse`]: for every response token,
//!   `log p_T(ŷ_t | context, ŷ_<t)` at the temperature asked for, and the teacher's `top_k` ids
//!   and log-probs at that position (the top-k support with its tail bucket, opd's default over
//!   the wire), or, for vocabularies of at most [`MAX_FULL_VOCAB`] tokens, every log-prob.
//! - Errors are a status with [`ErrorBody`] naming the field.

use serde::{Deserialize, Serialize};

/// The largest vocabulary whose full log-probs a server returns (`full: true`); larger ones
/// would send `4·V` bytes per token.
pub const MAX_FULL_VOCAB: usize = 4096;

/// What `GET /v1/model` says about the served model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// A name for logs (the model's path).
    pub name: String,
    /// Tokens in the vocabulary (the embedding's rows).
    pub vocab_size: usize,
    /// The tokenizer's size, added tokens included.
    pub tokenizer_size: usize,
    /// CRC-32 of the token table: every id's token string, in id order, newline-separated.
    pub token_table_crc32: u32,
    /// Begin-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence ids.
    pub eos: Vec<u32>,
    /// The longest context plus response the model scores.
    pub max_context: usize,
}

/// One sequence to score: the context the teacher reads and the response it scores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    /// Context ids (the prompt as the teacher reads it).
    pub context: Vec<u32>,
    /// Response ids, each scored given the context and the response before it.
    pub response: Vec<u32>,
}

/// `POST /v1/score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// The sequences.
    pub sequences: Vec<Sequence>,
    /// The teacher's most likely tokens returned per position; 0 for none. Default 0.
    #[serde(default)]
    pub top_k: usize,
    /// `τ` of `log softmax(z / τ)`. Default 1.
    #[serde(default = "one")]
    pub temperature: f64,
    /// Every log-prob per position (vocabularies up to [`MAX_FULL_VOCAB`]). Default false.
    #[serde(default)]
    pub full: bool,
}

fn one() -> f64 {
    1.0
}

/// One sequence's scores, one entry per response token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// `log p_T(ŷ_t)` of each response token.
    pub logprobs: Vec<f32>,
    /// The teacher's `top_k` ids per position, most likely first (empty when `top_k` is 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_ids: Vec<Vec<u32>>,
    /// Their log-probs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<Vec<f32>>,
    /// With `top_k > 0`: each response token's rank over the whole vocabulary, `1 + |{v :
    /// log p(v) > log p(ŷ_t)}|` (what vLLM reports as an entry's `rank`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<u32>,
    /// Every log-prob per position, `[R][V]` (with `full`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub full_logprobs: Vec<Vec<f32>>,
}

/// The answer to a [`ScoreRequest`], in its order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResponse {
    /// One per sequence.
    pub results: Vec<Scored>,
}

/// An error's body: `{"error": {"message": …, "field": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error itself, with the fields of vLLM's and OpenAI's `ErrorInfo` besides opd's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// In words.
    pub message: String,
    /// The request field at fault (`sequences[2].context`), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The kind, as vLLM names it: `BadRequestError`, `NotFoundError`, `ServiceUnavailableError`…
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The field at fault again, under vLLM's and OpenAI's name.
    #[serde(default)]
    pub param: Option<String>,
    /// The HTTP status.
    #[serde(default)]
    pub code: u16,
}

/// The identity of a token table: CRC-32 of every id's token string, in id order, each
/// followed by a newline (`tokens[id]` `""` for ids without one).
pub fn token_table_crc32(tokens: impl IntoIterator<Item = String>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for token in tokens {
        hasher.update(token.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize()
}
