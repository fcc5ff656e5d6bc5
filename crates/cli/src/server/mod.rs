//! `opd serve`: a model that scores student tokens over HTTP, for trainers on other machines
//! (the [`opd_teachers::Remote`] teacher). It speaks opd's protocol
//! ([`opd_teachers::remote::protocol`]: `GET /v1/model`, `POST /v1/score`) and, for clients
//! written against vLLM, the OpenAI-compatible completions endpoint with vLLM's prompt
//! log-probs ([`opd_teachers::remote::vllm`]: `GET /v1/models`, `POST /v1/completions`,
//! `POST /detokenize`).
//!
//! Requests from many clients are batched on the server: handlers put each request on a
//! bounded queue, and one scoring thread, which owns the model, takes every queued request
//! that asks for the same thing (top-k, temperature, full log-probs) up to `batch_rows`
//! sequences whose padded batch fits the model's context and scores them in one call (a valid
//! request is never failed by another's). A full queue is answered at once with 503 and
//! `Retry-After` (back-pressure); every malformed request with a JSON 4xx naming the field.
//!
//! Limits for a server left running where others can reach it, as vLLM's operators know them:
//! at most `max_logprobs` top entries a position (vLLM's `--max-logprobs`, default 20), tokens
//! per request, a temperature floor; a deadline per request, and a request whose client left is
//! not scored; bodies read a few at a time, with a time limit, and parsed and answered off the
//! async workers; connections capped, and closed when their headers do not arrive in time or
//! they sit idle; the token compared in constant time. After a burst the scorer hands the
//! memory it freed back to the system.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use opd_policy::{ChatTokenizer, Llama, Policy, SequenceBatch};
use opd_rollout::{ScoreOptions, score};
use opd_teachers::remote::protocol::{
    ErrorBody, ErrorDetail, MAX_FULL_VOCAB, ModelInfo, ScoreRequest, ScoreResponse, Scored,
    token_table_crc32,
};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, mpsc, oneshot};

mod http;
mod metrics;
mod vllm;

pub use http::serve;

/// The lowest temperature a request may ask for: below it `z / τ` leaves f32's range.
pub const MIN_TEMPERATURE: f64 = 1e-2;

/// A body above this many bytes has the memory its parse took handed back to the system soon
/// after (see [`ServerState::release_memory`]).
const LARGE_BODY: usize = 1 << 20;

/// Most values of full log-probs one request may ask for (`response tokens × vocabulary`).
pub const MAX_FULL_VALUES: usize = 1 << 22;

/// Limits and sizes of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// Sent by clients as `Authorization: Bearer …`; `None` lets anyone score.
    pub token: Option<String>,
    /// Most sequences in one request. Default 256.
    pub max_sequences: usize,
    /// Most token slots of one request's padded batch (longest context + longest response);
    /// the model's context at most.
    pub max_tokens: usize,
    /// Most tokens of one request, all its sequences together (and of one `/detokenize`).
    /// Default 65,536.
    pub max_request_tokens: usize,
    /// Most top entries one position may ask for (`top_k`, `prompt_logprobs`), as vLLM's
    /// `--max-logprobs`. Default 20.
    pub max_logprobs: usize,
    /// Largest request body. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Request bodies read at once; others wait their turn. Default 4.
    pub concurrent_bodies: usize,
    /// Requests waiting to be scored before new ones get 503. Default 64.
    pub queue: usize,
    /// Sequences scored together, across requests. Default 16.
    pub batch_rows: usize,
    /// Sequences per forward pass. Default 4.
    pub micro_batch: usize,
    /// How long a request may wait and be scored before it is answered 503. Default 300 s.
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers, or sit idle between requests,
    /// and to send its body. Default 10 s and 60 s.
    pub header_timeout: Duration,
    /// See [`Self::header_timeout`].
    pub body_timeout: Duration,
    /// Connections open at once; more are closed as they arrive. Default 256.
    pub max_connections: usize,
}

impl ServeOptions {
    /// The defaults, for a model of `max_context` tokens.
    pub fn new(max_context: usize) -> Self {
        Self {
            token: None,
            max_sequences: 256,
            max_tokens: max_context,
            max_request_tokens: 1 << 16,
            max_logprobs: 20,
            max_body_bytes: 16 << 20,
            concurrent_bodies: 4,
            queue: 64,
            batch_rows: 16,
            micro_batch: 4,
            request_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

/// An answer that is not a score: a status and [`ErrorBody`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>, field: Option<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field,
        }
    }

    fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, Some(field.into()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                param: self.field.clone(),
                field: self.field,
                kind: error_kind(self.status).into(),
                code: self.status.as_u16(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The error's kind as vLLM's `ErrorInfo.type` names it.
fn error_kind(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "BadRequestError",
        StatusCode::UNAUTHORIZED => "AuthenticationError",
        StatusCode::NOT_FOUND => "NotFoundError",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
        _ => "InternalServerError",
    }
}

/// A request on its way to the scoring thread.
struct Job {
    request: ScoreRequest,
    reply: oneshot::Sender<Result<ScoreResponse, ApiError>>,
    /// When the client stops waiting for it.
    deadline: Instant,
}

impl Job {
    /// Its padded batch: the longest context and the longest response.
    fn widths(&self) -> (usize, usize) {
        let s = &self.request.sequences;
        (
            s.iter().map(|s| s.context.len()).max().unwrap_or(0),
            s.iter().map(|s| s.response.len()).max().unwrap_or(0),
        )
    }
}

/// What the handlers share.
pub struct ServerState {
    info: ModelInfo,
    options: ServeOptions,
    queue: mpsc::Sender<Job>,
    /// For the vLLM-compatible endpoints' texts.
    tokenizer: ChatTokenizer,
    /// Turns for reading a request body.
    bodies: Semaphore,
    /// What `GET /metrics` reports.
    metrics: Arc<metrics::Metrics>,
    /// Set when a large body was read: the memory it took goes back to the system over the
    /// next few ticks of [`serve`] (its handling may outlast the first).
    trim: std::sync::atomic::AtomicU8,
}

impl ServerState {
    /// Starts the scoring thread, which owns `model`, and returns the handlers' state.
    pub fn start<B: Backend>(
        model: Llama<B>,
        tokenizer: &ChatTokenizer,
        name: impl Into<String>,
        options: ServeOptions,
    ) -> Arc<Self>
    where
        Llama<B>: Send + 'static,
    {
        let vocab = model.vocab_size();
        let info = ModelInfo {
            name: name.into(),
            vocab_size: vocab,
            tokenizer_size: tokenizer.vocab_size(),
            token_table_crc32: token_table_crc32(
                (0..vocab as u32).map(|id| tokenizer.id_to_token(id).unwrap_or_default()),
            ),
            bos: tokenizer.special.bos,
            eos: tokenizer.special.eos.clone(),
            max_context: model.max_context(),
        };
        let (queue, jobs) = mpsc::channel(options.queue.max(1));
        let sizes = BatchSizes {
            rows: options.batch_rows.max(1),
            micro_batch: options.micro_batch.max(1),
            slots: options.max_tokens.min(info.max_context),
        };
        let counters = Arc::new(metrics::Metrics::default());
        let scored = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("opd-serve-scorer".into())
            .spawn(move || score_jobs(model, jobs, sizes, &scored))
            .expect("a thread starts");
        Arc::new(Self {
            info,
            metrics: counters,
            trim: std::sync::atomic::AtomicU8::new(0),
            bodies: Semaphore::new(options.concurrent_bodies.max(1)),
            options,
            queue,
            tokenizer: tokenizer.clone(),
        })
    }

    /// The served model's identity.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Hands the memory freed since a large body was read back to the system (called every
    /// few seconds by [`serve`]; the scorer does the same whenever its queue empties).
    pub fn release_memory(&self) {
        let ticks = self.trim.load(Ordering::Relaxed);
        if ticks > 0 {
            let _ =
                self.trim
                    .compare_exchange(ticks, ticks - 1, Ordering::Relaxed, Ordering::Relaxed);
            opd_policy::allocator::release();
        }
    }

    /// Whether the scoring thread is alive (`GET /health`).
    pub fn is_ready(&self) -> bool {
        !self.queue.is_closed()
    }
}

/// How the scoring thread batches: sequences together, per forward, token slots of a batch.
#[derive(Debug, Clone, Copy)]
struct BatchSizes {
    rows: usize,
    micro_batch: usize,
    slots: usize,
}

/// The scoring thread: drops the requests whose client left or whose deadline passed, takes
/// the queued requests that ask for the same scores and whose padded batch fits, up to
/// `sizes.rows` sequences, and scores them together; when nothing waits, hands freed memory
/// back to the system.
fn score_jobs<B: Backend>(
    model: Llama<B>,
    mut jobs: mpsc::Receiver<Job>,
    sizes: BatchSizes,
    metrics: &metrics::Metrics,
) {
    let mut waiting: Vec<Job> = Vec::new();
    loop {
        if waiting.is_empty() {
            opd_policy::allocator::release();
            match jobs.blocking_recv() {
                Some(job) => waiting.push(job),
                None => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            waiting.push(job);
        }
        let now = Instant::now();
        waiting.retain(|job| !job.reply.is_closed() && job.deadline > now);
        if waiting.is_empty() {
            continue;
        }
        // The first request's kind, and every waiting request of that kind that fits.
        let key = |r: &ScoreRequest| (r.top_k, r.temperature.to_bits(), r.full);
        let first = key(&waiting[0].request);
        let (mut rows, mut context, mut response) = (0, 0, 0);
        let mut taken = Vec::new();
        let mut rest = Vec::new();
        for job in waiting.drain(..) {
            let n = job.request.sequences.len();
            let (c, r) = job.widths();
            let fits = rows + n <= sizes.rows && context.max(c) + response.max(r) <= sizes.slots;
            if key(&job.request) == first && (taken.is_empty() || fits) {
                (rows, context, response) = (rows + n, context.max(c), response.max(r));
                taken.push(job);
            } else {
                rest.push(job);
            }
        }
        waiting = rest;
        let requests: Vec<&ScoreRequest> = taken.iter().map(|j| &j.request).collect();
        let mut answers = score_together(&model, &requests, sizes.micro_batch);
        if requests.len() > 1 && answers.iter().any(Result::is_err) {
            // One request's failure is its own: score each alone.
            answers = requests
                .iter()
                .flat_map(|r| score_together(&model, &[r], sizes.micro_batch))
                .collect();
        }
        for (job, answer) in taken.into_iter().zip(answers.drain(..)) {
            if answer.is_ok() {
                let sequences = &job.request.sequences;
                let tokens: usize = sequences.iter().map(|s| s.response.len()).sum();
                metrics
                    .sequences
                    .fetch_add(sequences.len() as u64, Ordering::Relaxed);
                metrics.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
            }
            let _ = job.reply.send(answer);
        }
    }
}

/// Scores `requests` (of one kind) in one batch and splits the results back.
fn score_together<B: Backend>(
    model: &Llama<B>,
    requests: &[&ScoreRequest],
    micro_batch: usize,
) -> Vec<Result<ScoreResponse, ApiError>> {
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e, None);
    let sequences: Vec<_> = requests.iter().flat_map(|r| &r.sequences).collect();
    let batch = SequenceBatch::new(
        sequences.iter().map(|s| s.context.clone()).collect(),
        sequences.iter().map(|s| s.response.clone()).collect(),
    );
    let first = requests[0];
    let scored = batch
        .map_err(|e| internal(e.to_string()))
        .and_then(|batch| match first.full {
            // Every log-prob: the token's own and the top-k are read from them (one forward).
            true => Ok(
                full_log_probs(model, &batch, first.temperature, micro_batch)?
                    .into_iter()
                    .zip(batch.responses())
                    .map(|(full, response)| from_full(full, response, first.top_k))
                    .collect(),
            ),
            false => {
                let options = ScoreOptions {
                    micro_batch,
                    top_k: first.top_k,
                    temperature: first.temperature,
                    ranks: first.top_k > 0,
                };
                let rows = score(model, &batch, options)
                    .map_err(|e| internal(e.to_string()))?
                    .to_rows(&batch);
                Ok(rows
                    .into_iter()
                    .map(|row| Scored {
                        logprobs: row.logprobs,
                        top_ids: row
                            .top_k
                            .iter()
                            .map(|p| p.iter().map(|(id, _)| *id).collect())
                            .collect(),
                        top_logprobs: row
                            .top_k
                            .iter()
                            .map(|p| p.iter().map(|(_, lp)| *lp).collect())
                            .collect(),
                        ranks: row.ranks,
                        full_logprobs: Vec::new(),
                    })
                    .collect::<Vec<_>>())
            }
        });
    match scored {
        Ok(mut all) => requests
            .iter()
            .map(|r| {
                Ok(ScoreResponse {
                    results: all.drain(..r.sequences.len()).collect(),
                })
            })
            .collect(),
        Err(e) => requests.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// A row's scores from its full log-probs `[R][V]`: each response token's own, and the
/// `top_k` most likely per position, most likely first, with each token's rank.
fn from_full(full: Vec<Vec<f32>>, response: &[u32], top_k: usize) -> Scored {
    let logprobs = full
        .iter()
        .zip(response)
        .map(|(position, &token)| position[token as usize])
        .collect();
    let (mut top_ids, mut top_logprobs, mut ranks) = (Vec::new(), Vec::new(), Vec::new());
    if top_k > 0 {
        for (position, &token) in full.iter().zip(response) {
            let own = position[token as usize];
            ranks.push(1 + position.iter().filter(|&&lp| lp > own).count() as u32);
            let mut ids: Vec<u32> = (0..position.len() as u32).collect();
            ids.sort_by(|&a, &b| position[b as usize].total_cmp(&position[a as usize]));
            ids.truncate(top_k);
            top_logprobs.push(ids.iter().map(|&id| position[id as usize]).collect());
            top_ids.push(ids);
        }
    }
    Scored {
        logprobs,
        top_ids,
        top_logprobs,
        ranks,
        full_logprobs: full,
    }
}

/// `log softmax(z / τ)` at every response position of every row, `[B][R][V]`.
fn full_log_probs<B: Backend>(
    model: &Llama<B>,
    batch: &SequenceBatch,
    temperature: f64,
    micro_batch: usize,
) -> Result<Vec<Vec<Vec<f32>>>, ApiError> {
    let mut out = Vec::with_capacity(batch.len());
    for start in (0..batch.len()).step_by(micro_batch) {
        let end = (start + micro_batch).min(batch.len());
        let rows = batch
            .rows(start..end)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
        let logits = model
            .response_logits(&rows)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
        let [_, width, vocab] = logits.dims();
        let values: Vec<f32> = log_softmax(logits.div_scalar(temperature), 2)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32 values");
        for (i, response) in rows.responses().iter().enumerate() {
            out.push(
                (0..response.len())
                    .map(|t| values[(i * width + t) * vocab..(i * width + t + 1) * vocab].to_vec())
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Checks a request against the model and the limits; the error names the field.
fn check(request: &ScoreRequest, state: &ServerState) -> Result<(), ApiError> {
    let (info, limits) = (&state.info, &state.options);
    let n = request.sequences.len();
    if n == 0 || n > limits.max_sequences {
        return Err(ApiError::field(
            "sequences",
            format!("{n} sequences: expected 1 to {}", limits.max_sequences),
        ));
    }
    if !(request.temperature.is_finite() && request.temperature >= MIN_TEMPERATURE) {
        return Err(ApiError::field(
            "temperature",
            format!(
                "{:e}: expected a finite number ≥ {MIN_TEMPERATURE}",
                request.temperature
            ),
        ));
    }
    let most = limits.max_logprobs.min(info.vocab_size);
    if request.top_k > most {
        return Err(ApiError::field(
            "top_k",
            format!(
                "{}: at most {most} (the server's --max-logprobs, and the vocabulary)",
                request.top_k
            ),
        ));
    }
    if request.full && info.vocab_size > MAX_FULL_VOCAB {
        return Err(ApiError::field(
            "full",
            format!(
                "full log-probs of a {}-token vocabulary are not served (at most \
                 {MAX_FULL_VOCAB}): ask for a top_k",
                info.vocab_size
            ),
        ));
    }
    let tokens: usize = request
        .sequences
        .iter()
        .map(|s| s.context.len() + s.response.len())
        .sum();
    if tokens > limits.max_request_tokens {
        return Err(ApiError::field(
            "sequences",
            format!(
                "{tokens} tokens in all: at most {} a request (the server's \
                 --max-request-tokens)",
                limits.max_request_tokens
            ),
        ));
    }
    let response_tokens: usize = request.sequences.iter().map(|s| s.response.len()).sum();
    if request.full && response_tokens * info.vocab_size > MAX_FULL_VALUES {
        return Err(ApiError::field(
            "full",
            format!(
                "{response_tokens} response tokens × {} log-probs: at most {MAX_FULL_VALUES} \
                 values a request",
                info.vocab_size
            ),
        ));
    }
    let limit = limits.max_tokens.min(info.max_context);
    let width = |part: fn(&opd_teachers::remote::protocol::Sequence) -> usize| {
        request.sequences.iter().map(part).max().unwrap_or(0)
    };
    let slots = width(|s| s.context.len()) + width(|s| s.response.len());
    for (i, s) in request.sequences.iter().enumerate() {
        for (part, ids) in [("context", &s.context), ("response", &s.response)] {
            if ids.is_empty() {
                return Err(ApiError::field(
                    format!("sequences[{i}].{part}"),
                    "empty: expected at least one token",
                ));
            }
            if let Some(id) = ids.iter().find(|&&id| id as usize >= info.vocab_size) {
                return Err(ApiError::field(
                    format!("sequences[{i}].{part}"),
                    format!(
                        "token {id} is outside the {}-token vocabulary",
                        info.vocab_size
                    ),
                ));
            }
        }
        let tokens = s.context.len() + s.response.len();
        if tokens > limit {
            return Err(ApiError::field(
                format!("sequences[{i}]"),
                format!("{tokens} tokens (context + response): at most {limit}"),
            ));
        }
    }
    if slots > limit {
        return Err(ApiError::field(
            "sequences",
            format!(
                "the longest context plus the longest response is {slots} tokens: at most \
                 {limit} (sequences are scored as one padded batch; send them apart)"
            ),
        ));
    }
    Ok(())
}

/// `401` unless the request carries the server's token (when it has one).
fn authorize(headers: &HeaderMap, state: &ServerState) -> Result<(), ApiError> {
    let Some(token) = &state.options.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer …)",
            Some("Authorization".into()),
        )),
    }
}

async fn model_info(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    match authorize(&headers, &state) {
        Ok(()) => axum::Json(state.info.clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics` in Prometheus' text format (no token needed: counts only).
async fn metrics_text(State(state): State<Arc<ServerState>>) -> Response {
    let capacity = state.queue.max_capacity();
    let text = state
        .metrics
        .render(capacity - state.queue.capacity(), capacity);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// `GET /health`: 200 while the scorer runs, 503 once it has stopped (no token needed).
async fn health(State(state): State<Arc<ServerState>>) -> StatusCode {
    match state.is_ready() {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn score_handler(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&headers, &state)?;
    let request: ScoreRequest = parse(&state, body).await?;
    check(&request, &state)?;
    json(scored(&state, request).await?).await
}

/// `value` as a JSON answer, serialised on a blocking thread (a large answer does not hold
/// up the async workers).
async fn json<T: serde::Serialize + Send + 'static>(value: T) -> Result<Response, ApiError> {
    let bytes = tokio::task::spawn_blocking(move || serde_json::to_vec(&value))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e, None))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}

/// Puts a checked request on the queue and waits for its scores, at most the request
/// timeout (the scorer drops it then, and drops it too when this wait is abandoned: the
/// client left).
async fn scored(state: &ServerState, request: ScoreRequest) -> Result<ScoreResponse, ApiError> {
    let (reply, answer) = oneshot::channel();
    let timeout = state.options.request_timeout;
    let deadline = Instant::now() + timeout;
    let job = Job {
        request,
        reply,
        deadline,
    };
    state.queue.try_send(job).map_err(|e| {
        let why = match e {
            mpsc::error::TrySendError::Full(_) => "the queue is full: retry shortly",
            mpsc::error::TrySendError::Closed(_) => "the scorer has stopped",
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why, None)
    })?;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) if Instant::now() >= deadline => Err(late(timeout)),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scorer stopped before answering",
            None,
        )),
        Err(_) => Err(late(timeout)),
    }
}

fn late(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "not scored within the server's request timeout ({} s): retry later",
            timeout.as_secs()
        ),
        None,
    )
}

/// The request body, at most `max_body_bytes`, read in one of the server's turns for bodies
/// within the body timeout, and parsed as `T` on a blocking thread (400 with serde's message,
/// which names the field).
async fn parse<T: serde::de::DeserializeOwned + Send + 'static>(
    state: &ServerState,
    body: Body,
) -> Result<T, ApiError> {
    let limit = state.options.max_body_bytes;
    let timeout = state.options.body_timeout;
    let read = async {
        let _turn = state.bodies.acquire().await;
        axum::body::to_bytes(body, limit).await
    };
    let bytes = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {limit} bytes, or was cut off"),
                None,
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {} s", timeout.as_secs()),
                None,
            ));
        }
    };
    if bytes.len() > LARGE_BODY {
        state.trim.store(3, Ordering::Relaxed);
    }
    tokio::task::spawn_blocking(move || serde_json::from_slice::<T>(&bytes))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("not a request of this endpoint: {e}"),
                None,
            )
        })
}

/// The routes: `GET /health`, `GET /metrics`, `GET /v1/model`, `POST /v1/score`, and vLLM's;
/// anything else 404 with a JSON body.
pub fn router(state: Arc<ServerState>) -> Router {
    let counters = Arc::clone(&state.metrics);
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/model", get(model_info))
        .route("/v1/score", post(score_handler))
        .route("/v1/models", get(vllm::models))
        .route("/v1/completions", post(vllm::completions))
        .route("/detokenize", post(vllm::detokenize))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route: GET /health, GET /metrics, GET /v1/model, POST /v1/score, \
                 GET /v1/models, POST /v1/completions, POST /detokenize",
                None,
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            counters,
            metrics::track,
        ))
        .with_state(state)
}
