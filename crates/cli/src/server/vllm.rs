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

/// `POST /v1/completions` for prompt log-probs, as vLLM answers it (see
/// [`opd_teachers::remote::vllm`]): nothing is generated (`max_tokens` 0 or 1, the text empty);
/// every entry carries an integer rank, the prompt token's its true rank over the vocabulary.
pub(super) async fn completions(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&headers, &state)?;
    let request: vllm::CompletionRequest = parse(&state, body).await?;
    if request.max_tokens > 1 {
        return Err(ApiError::field(
            "max_tokens",
            format!(
                "{}: opd serve scores prompts only (0 or 1)",
                request.max_tokens
            ),
        ));
    }
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
    let k = request.prompt_logprobs;
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
                                logprob,
                                rank: Some(r + 1),
                                decoded_token: text(id),
                            },
                        );
                    }
                }
                entries.insert(
                    token.to_string(),
                    vllm::PromptLogprob {
                        logprob: scores.logprobs[t],
                        rank: scores.ranks.get(t).map(|&r| r as usize),
                        decoded_token: text(token),
                    },
                );
                positions.push(Some(entries));
            }
            vllm::Choice {
                index,
                text: String::new(),
                prompt_logprobs: positions,
                finish_reason: Some("length".into()),
            }
        })
        .collect();
    json(vllm::CompletionResponse {
        id: "cmpl-opd".into(),
        object: "text_completion".into(),
        model: state.info.name.clone(),
        choices,
    })
    .await
}
