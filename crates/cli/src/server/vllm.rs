//! The OpenAI-compatible endpoints as vLLM answers them ([`opd_teachers::remote::vllm`]), so
//! that clients written against vLLM can use `opd serve`: `GET /v1/models`,
//! `POST /v1/completions` (prompt log-probs) and `POST /detokenize`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opd_teachers::remote::protocol::{ScoreRequest, Sequence};
use opd_teachers::remote::vllm;
use opd_teachers::remote::vllm::DetokenizeRequest;

use super::{ApiError, ServerState, authorize, check, json, parse, scored};

/// `GET /v1/models`, as the OpenAI API and vLLM answer it.
pub(super) async fn models(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&headers, &state) {
        return e.into_response();
    }
    axum::Json(vllm::ModelList {
        object: "list".into(),
        data: vec![vllm::ModelCard {
            id: state.info.name.clone(),
            object: "model".into(),
            created: unix_seconds(),
            owned_by: "opd".into(),
            root: Some(state.info.name.clone()),
            parent: None,
            max_model_len: Some(state.info.max_context),
        }],
    })
    .into_response()
}

/// `POST /detokenize`, as vLLM answers it.
pub(super) async fn detokenize(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&headers, &state)?;
    let request: DetokenizeRequest = parse(&state, body).await?;
    let most = state.options.max_request_tokens;
    if request.tokens.len() > most {
        return Err(ApiError::field(
            "tokens",
            format!(
                "{} tokens: at most {most} (the server's --max-request-tokens)",
                request.tokens.len()
            ),
        ));
    }
    if let Some(id) = request
        .tokens
        .iter()
        .find(|&&id| id as usize >= state.info.vocab_size)
    {
        return Err(ApiError::field(
            "tokens",
            format!(
                "token {id} is outside the {}-token vocabulary",
                state.info.vocab_size
            ),
        ));
    }
    let prompt = state
        .tokenizer
        .decode(&request.tokens, false)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
    json(vllm::DetokenizeResponse { prompt }).await
}

/// Seconds since the Unix epoch.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The log-prob vLLM sends for `logprob`: `-9999.0` in place of `-inf`.
fn sent(logprob: f32) -> f32 {
    if logprob == f32::NEG_INFINITY {
        -9999.0
    } else {
        logprob
    }
}

/// The `k` of a completions request's `prompt_logprobs` (`-1`: the whole vocabulary), or the
/// 400 that says why `opd serve` does not answer it: it scores prompts and generates nothing,
/// so it refuses what would ask for generated tokens (`max_tokens` above 1, vLLM's default 16
/// when absent; `logprobs`; `n` other than 1; `stream`).
fn prompt_top_k(request: &vllm::CompletionRequest, vocab_size: usize) -> Result<usize, ApiError> {
    let max_tokens = request.max_tokens.unwrap_or(16);
    if max_tokens > 1 {
        let absent = if request.max_tokens.is_none() {
            " (vLLM's default when absent)"
        } else {
            ""
        };
        return Err(ApiError::field(
            "max_tokens",
            format!(
                "{max_tokens}{absent}: opd serve scores prompts and generates nothing: send 0 or 1"
            ),
        ));
    }
    if request.logprobs.is_some() {
        return Err(ApiError::field(
            "logprobs",
            "log-probs of generated tokens: opd serve generates nothing; ask for prompt_logprobs",
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::field(
            "n",
            "several choices per prompt: opd serve scores each prompt once (n = 1)",
        ));
    }
    if request.stream == Some(true) {
        return Err(ApiError::field(
            "stream",
            "prompt log-probs are not available when streaming (as in vLLM)",
        ));
    }
    match request.prompt_logprobs {
        None => Err(ApiError::field(
            "prompt_logprobs",
            "missing: opd serve answers prompt log-probs only (0 for the prompt's own tokens, \
             k for the k most likely besides, -1 for the whole vocabulary)",
        )),
        Some(-1) => Ok(vocab_size),
        Some(k) if k < 0 => Err(ApiError::field(
            "prompt_logprobs",
            format!("{k}: must be a positive value or -1 (as in vLLM)"),
        )),
        Some(k) => Ok(usize::try_from(k).unwrap_or(usize::MAX)),
    }
}

/// `POST /v1/completions` for prompt log-probs, as vLLM answers it (see
/// [`opd_teachers::remote::vllm`]): every field of vLLM's answer, every entry with an integer
/// rank (the prompt token's its true rank over the vocabulary). Nothing is generated: with
/// `max_tokens` 1 vLLM would also sample one token, `opd serve` answers its text empty
/// (`completion_tokens` 0); what asks for generated tokens is refused ([`prompt_top_k`]).
pub(super) async fn completions(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&headers, &state)?;
    let request: vllm::CompletionRequest = parse(&state, body).await?;
    let k = prompt_top_k(&request, state.info.vocab_size)?;
    let prompts = request.prompt.into_prompts();
    let sequences = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| match p.split_first() {
            Some((first, rest)) if !rest.is_empty() => Ok(Sequence {
                context: vec![*first],
                response: rest.to_vec(),
            }),
            _ => Err(ApiError::field(
                format!("prompt[{i}]"),
                "at least two tokens: the first is only context",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A top-k of at least 1 so that the scorer counts every token's rank.
    let score = ScoreRequest {
        sequences,
        top_k: k.max(1),
        temperature: 1.0,
        full: false,
    };
    check(&score, &state).map_err(|e| ApiError {
        field: e.field.map(|f| match f.as_str() {
            "top_k" => "prompt_logprobs".into(),
            _ => f.replace("sequences", "prompt"),
        }),
        ..e
    })?;
    let answer = scored(&state, score).await?;
    let text = |id: u32| state.tokenizer.decode(&[id], false).ok();
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let choices = prompts
        .iter()
        .zip(answer.results)
        .enumerate()
        .map(|(index, (prompt, scores))| {
            let mut positions = vec![None];
            for (t, &token) in prompt[1..].iter().enumerate() {
                let mut entries = std::collections::BTreeMap::new();
                if k > 0 {
                    for (r, (&id, &logprob)) in scores.top_ids[t]
                        .iter()
                        .zip(&scores.top_logprobs[t])
                        .enumerate()
                    {
                        entries.insert(
                            id.to_string(),
                            vllm::PromptLogprob {
                                logprob: sent(logprob),
                                rank: Some(r + 1),
                                decoded_token: text(id),
                            },
                        );
                    }
                }
                entries.insert(
                    token.to_string(),
                    vllm::PromptLogprob {
                        logprob: sent(scores.logprobs[t]),
                        rank: scores.ranks.get(t).map(|&r| r as usize),
                        decoded_token: text(token),
                    },
                );
                positions.push(Some(entries));
            }
            vllm::Choice {
                index,
                text: String::new(),
                logprobs: None,
                finish_reason: Some("length".into()),
                stop_reason: None,
                token_ids: None,
                prompt_logprobs: positions,
                prompt_token_ids: None,
            }
        })
        .collect();
    static ANSWERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let created = unix_seconds();
    let n = ANSWERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json(vllm::CompletionResponse {
        id: format!("cmpl-opd-{created:x}-{n}"),
        object: "text_completion".into(),
        created,
        model: state.info.name.clone(),
        choices,
        service_tier: None,
        system_fingerprint: None,
        usage: Some(vllm::Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
            completion_tokens: Some(0),
            prompt_tokens_details: None,
        }),
    })
    .await
}
