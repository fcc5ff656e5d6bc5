//! A teacher on another machine: `opd serve` (or any server speaking [`protocol`]) scores the
//! student's tokens over HTTP.
//!
//! The vocabulary is checked when connecting ([`Remote::connect`]): the served model's size and
//! the CRC-32 of its token table must be the student's, so a teacher with another vocabulary
//! is refused before a step runs. A request that fails for a reason that may pass (the server
//! unreachable, busy: 429 and 503, or failing: 5xx) is retried with exponential backoff
//! (honouring `Retry-After`) for up to `wait`; then the step fails before any update, with an
//! error naming the server.

pub mod protocol;
pub mod vllm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use opd_divergences::TeacherTarget;
use opd_policy::{ChatTokenizer, SequenceBatch, Trainable};
use protocol::{MAX_FULL_VOCAB, ModelInfo, ScoreRequest, ScoreResponse, Sequence};

use crate::error::{Result, TeacherError};
use crate::output::{Request, TeacherOutput, TeacherSupport};
use crate::teacher::Teacher;

/// Which protocol the server speaks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Protocol {
    /// opd's own ([`protocol`]): `opd serve`.
    #[default]
    Opd,
    /// The OpenAI-compatible completions endpoint with vLLM's `prompt_logprobs` ([`vllm`]): a
    /// vLLM (or SGLang) server holding a large teacher. Scores at temperature 1, top-k up to the
    /// server's `--max-logprobs`; the vocabulary is checked by decoding a spread of ids.
    Vllm {
        /// The served model's name (`model` of each request); empty: the server's first.
        model: String,
    },
}

/// Where the teacher is and how long to wait for it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteOptions {
    /// The server's base URL (`http://10.0.0.2:8000`).
    pub url: String,
    /// opd's protocol or vLLM's. Default opd's.
    pub protocol: Protocol,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<String>,
    /// The longest one request may take. Default 120 s.
    pub timeout: Duration,
    /// How long a request is retried while the server is unreachable or busy. Default 300 s.
    pub wait: Duration,
    /// The largest answer read, in bytes (a top-64 answer takes about 1 KiB a token).
    /// Default 256 MiB.
    pub max_answer_bytes: u64,
}

impl RemoteOptions {
    /// `url` with the default timeout and wait.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_string(),
            protocol: Protocol::Opd,
            token: None,
            timeout: Duration::from_secs(120),
            wait: Duration::from_secs(300),
            max_answer_bytes: 256 << 20,
        }
    }
}

/// **Remote** teacher: a model served over HTTP, `θ_T` fixed, scoring the student's tokens
/// (OPD with a teacher that never sits in the trainer's memory).
#[derive(Debug)]
pub struct Remote {
    client: Client,
    info: ModelInfo,
    /// Response tokens scored, for [`Remote::bytes_per_token`].
    scored: AtomicU64,
}

/// The HTTP side: where the server is, the connection pool, and the bytes received.
#[derive(Debug)]
struct Client {
    options: RemoteOptions,
    agent: ureq::Agent,
    received: AtomicU64,
}

impl Remote {
    /// Connects to the server of `options` and checks its vocabulary against the student's
    /// (`student_tokenizer`, and the student model's `vocab_size`): another size or token
    /// table is an error, as for an [`crate::External`] teacher.
    pub fn connect(
        options: RemoteOptions,
        student_tokenizer: &ChatTokenizer,
        vocab_size: usize,
    ) -> Result<Self> {
        if options.token.is_some() && sends_in_clear(&options.url) {
            tracing::warn!(
                "teacher {}: the bearer token travels unencrypted over plain HTTP to another \
                 machine; use an https:// URL (or a tunnel)",
                options.url
            );
        }
        let mut client = Client {
            agent: ureq::AgentBuilder::new().timeout(options.timeout).build(),
            options,
            received: AtomicU64::new(0),
        };
        let student_table = protocol::token_table_crc32(
            (0..vocab_size as u32).map(|id| student_tokenizer.id_to_token(id).unwrap_or_default()),
        );
        let info = match client.options.protocol.clone() {
            Protocol::Opd => client.call::<ModelInfo>("GET", "/v1/model", None::<&()>)?,
            Protocol::Vllm { model } => {
                client.vllm_info(&model, student_tokenizer, vocab_size, student_table)?
            }
        };
        if info.vocab_size != vocab_size || info.token_table_crc32 != student_table {
            return Err(TeacherError::VocabularyMismatch {
                teacher: info.vocab_size,
                student: vocab_size,
                first_difference: None,
            });
        }
        Ok(Self {
            client,
            info,
            scored: AtomicU64::new(0),
        })
    }

    /// What the server said about its model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Response bytes received per response token scored so far (what travels over the wire).
    pub fn bytes_per_token(&self) -> Option<f64> {
        let scored = self.scored.load(Ordering::Relaxed);
        let received = self.client.received.load(Ordering::Relaxed);
        (scored > 0).then(|| received as f64 / scored as f64)
    }
}

impl Client {
    /// A vLLM server's model, its vocabulary checked by decoding [`vllm::probe_ids`] there and
    /// here: vLLM does not give its token table, so the identity recorded is the student's
    /// once the texts agree.
    fn vllm_info(
        &mut self,
        model: &str,
        student_tokenizer: &ChatTokenizer,
        vocab_size: usize,
        table: u32,
    ) -> Result<ModelInfo> {
        let models: vllm::ModelList = self.call("GET", "/v1/models", None::<&()>)?;
        let card = match model {
            "" => models.data.first(),
            name => models.data.iter().find(|m| m.id == name),
        }
        .ok_or_else(|| self.error(format!("serves no model named {model:?}")))?
        .clone();
        self.options.protocol = Protocol::Vllm {
            model: card.id.clone(),
        };
        let ids = vllm::probe_ids(vocab_size, 256);
        let theirs: vllm::DetokenizeResponse = self.call(
            "POST",
            "/detokenize",
            Some(&vllm::DetokenizeRequest {
                model: card.id.clone(),
                tokens: ids.clone(),
            }),
        )?;
        let ours = student_tokenizer.decode(&ids, false)?;
        Ok(ModelInfo {
            name: card.id,
            vocab_size,
            tokenizer_size: vocab_size,
            // Texts that differ mark another vocabulary: a table that cannot match.
            token_table_crc32: if theirs.prompt == ours { table } else { !table },
            bos: student_tokenizer.special.bos,
            eos: student_tokenizer.special.eos.clone(),
            max_context: card.max_model_len.unwrap_or(usize::MAX),
        })
    }

    fn error(&self, problem: impl Into<String>) -> TeacherError {
        TeacherError::Remote {
            url: self.options.url.clone(),
            problem: problem.into(),
        }
    }

    /// One call, retried while it may yet pass: the server unreachable, 429, 503 or another
    /// 5xx, with backoff from 0.5 s doubling to 30 s (or the server's `Retry-After`, held
    /// within [`RETRY_AFTER`]), for up to `wait`. A 4xx other than 429 fails at once with the
    /// server's message.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.options.url);
        let start = Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            let mut request = self.agent.request(method, &url);
            if let Some(token) = &self.options.token {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            let sent = match body {
                Some(body) => request.send_json(body),
                None => request.call(),
            };
            let retry_after = match sent {
                Ok(response) => {
                    let text = self.read_answer(response, path)?;
                    self.received
                        .fetch_add(text.len() as u64, Ordering::Relaxed);
                    return serde_json::from_str(&text).map_err(|e| {
                        self.error(format!("the answer to {path} is not opd's: {e}"))
                    });
                }
                Err(ureq::Error::Status(code, response)) if code == 429 || code >= 500 => {
                    let seconds = response
                        .header("Retry-After")
                        .and_then(|s| s.trim().parse::<u64>().ok());
                    let why = format!("{code} {}", response.into_string().unwrap_or_default());
                    let pause = seconds.map(|s| {
                        Duration::from_secs(s).clamp(*RETRY_AFTER.start(), *RETRY_AFTER.end())
                    });
                    (pause, why)
                }
                Err(ureq::Error::Status(code, response)) => {
                    let body = response.into_string().unwrap_or_default();
                    let message = serde_json::from_str::<protocol::ErrorBody>(&body)
                        .map(|b| match b.error.field {
                            Some(field) => format!("{field}: {}", b.error.message),
                            None => b.error.message,
                        })
                        .unwrap_or(body);
                    return Err(self.error(format!("{path} refused ({code}): {message}")));
                }
                Err(ureq::Error::Transport(e)) => (None, e.to_string()),
            };
            let (wait, why) = retry_after;
            let pause = wait.unwrap_or(delay);
            if start.elapsed().saturating_add(pause) > self.options.wait {
                return Err(self.error(format!(
                    "{path} failed for {:.0} s, longer than the {:.0} s a run waits for its \
                     teacher: {why}",
                    start.elapsed().as_secs_f64(),
                    self.options.wait.as_secs_f64()
                )));
            }
            tracing::warn!(
                "teacher {url}: {why}; retrying in {:.1} s",
                pause.as_secs_f64()
            );
            std::thread::sleep(pause);
            delay = delay.saturating_mul(2).min(Duration::from_secs(30));
        }
    }

    /// The answer's body as text, at most `max_answer_bytes` (else an error naming the
    /// setting).
    fn read_answer(&self, response: ureq::Response, path: &str) -> Result<String> {
        use std::io::Read;
        let most = self.options.max_answer_bytes;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(most.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| self.error(format!("reading the answer to {path}: {e}")))?;
        if bytes.len() as u64 > most {
            return Err(self.error(format!(
                "the answer to {path} is larger than {most} bytes (`max_answer_bytes`): \
                 send fewer rows a request (a smaller micro_batch) or raise the limit"
            )));
        }
        String::from_utf8(bytes)
            .map_err(|e| self.error(format!("the answer to {path} is not UTF-8: {e}")))
    }
}

/// The range a server's `Retry-After` is held within: no busy loop, no wait of days.
pub const RETRY_AFTER: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(60);

impl<B: AutodiffBackend, M: Trainable<B>> Teacher<B, M> for Remote {
    fn outputs(
        &self,
        student: &M,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>> {
        let (top_k, full) = match request.support {
            TeacherSupport::SampledToken => (0, false),
            TeacherSupport::TopK(k) => (k, false),
            TeacherSupport::Logits if self.info.vocab_size <= MAX_FULL_VOCAB => (0, true),
            TeacherSupport::Logits => {
                return Err(self.client.error(format!(
                    "full logits of a {}-token vocabulary do not travel (at most {MAX_FULL_VOCAB}): \
                     use a top-k support (`teacher_top_k`)",
                    self.info.vocab_size
                )));
            }
        };
        let sequences: Vec<Sequence> = batch
            .contexts()
            .iter()
            .zip(batch.responses())
            .map(|(context, response)| Sequence {
                context: context.clone(),
                response: response.clone(),
            })
            .collect();
        let answer = match &self.client.options.protocol {
            Protocol::Opd => {
                let body = ScoreRequest {
                    sequences,
                    top_k,
                    temperature: request.temperature,
                    full,
                };
                self.client
                    .call::<ScoreResponse>("POST", "/v1/score", Some(&body))?
            }
            Protocol::Vllm { model } => {
                if request.temperature != 1.0 || full {
                    return Err(self.client.error(format!(
                        "a vLLM server scores prompts from raw logits: temperature 1 and a \
                         top-k or sampled-token support only (asked: temperature {}, {:?})",
                        request.temperature, request.support
                    )));
                }
                let body = vllm::request(model, &sequences, top_k);
                let answer: vllm::CompletionResponse =
                    self.client.call("POST", "/v1/completions", Some(&body))?;
                let mut results = Vec::with_capacity(sequences.len());
                for (i, sequence) in sequences.iter().enumerate() {
                    let choice = answer
                        .choices
                        .iter()
                        .find(|c| c.index == i)
                        .and_then(|c| vllm::scored(c, sequence, top_k));
                    results.push(choice.ok_or_else(|| {
                        self.client.error(format!(
                            "choice {i} lacks the prompt log-probs of its response (top {top_k})"
                        ))
                    })?);
                }
                ScoreResponse { results }
            }
        };
        let tokens: usize = batch.responses().iter().map(Vec::len).sum();
        self.scored.fetch_add(tokens as u64, Ordering::Relaxed);
        self.check(&answer, batch, top_k, full)?;
        let device = burn::module::Module::devices(student)
            .into_iter()
            .next()
            .unwrap_or_default();
        let (rows, width) = (batch.len(), batch.response_width());
        let temperature = request.temperature;
        let padded =
            |per_position: usize, fill: f32, value: &dyn Fn(usize, usize, usize) -> f32| {
                let mut flat = vec![fill; rows * width * per_position];
                for (b, scored) in answer.results.iter().enumerate() {
                    for t in 0..scored.logprobs.len() {
                        for j in 0..per_position {
                            flat[(b * width + t) * per_position + j] = value(b, t, j);
                        }
                    }
                }
                flat
            };
        Ok(if full {
            let vocab = self.info.vocab_size;
            // log-probs at τ times τ are logits whose softmax at τ is the teacher's p_τ.
            let values = padded(vocab, 0.0, &|b, t, j| {
                answer.results[b].full_logprobs[t][j] * temperature as f32
            });
            TeacherOutput::Distribution {
                target: TeacherTarget::Logits(Tensor::from_data(
                    TensorData::new(values, [rows, width, vocab]),
                    &device,
                )),
                temperature,
            }
        } else if top_k > 0 {
            let ids = padded(top_k, 0.0, &|b, t, j| {
                answer.results[b].top_ids[t][j] as f32
            });
            let log_probs = padded(top_k, f32::NEG_INFINITY, &|b, t, j| {
                answer.results[b].top_logprobs[t][j]
            });
            let ids: Vec<i64> = ids.into_iter().map(|v| v as i64).collect();
            TeacherOutput::Distribution {
                target: TeacherTarget::TopK {
                    ids: Tensor::from_data(TensorData::new(ids, [rows, width, top_k]), &device),
                    log_probs: Tensor::from_data(
                        TensorData::new(log_probs, [rows, width, top_k]),
                        &device,
                    ),
                },
                temperature,
            }
        } else {
            let values = padded(1, 0.0, &|b, t, _| answer.results[b].logprobs[t]);
            TeacherOutput::SampledToken {
                log_probs: Tensor::from_data(TensorData::new(values, [rows, width]), &device),
                temperature,
            }
        })
    }
}

/// Whether `url` is plain HTTP to a host other than this machine.
fn sends_in_clear(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    !matches!(host, "localhost" | "127.0.0.1" | "[::1]") && !host.starts_with("127.")
}

/// How far above 0 (or out of order) a log-prob may sit from float rounding on the server.
const LOG_PROB_SLACK: f32 = 1e-4;

/// Whether `v` can be a log-prob: finite and ≤ 0 (within rounding).
fn is_log_prob(v: f32) -> bool {
    v.is_finite() && v <= LOG_PROB_SLACK
}

impl Remote {
    /// The answer has one result per sequence and one entry per response token, of the sizes
    /// asked for, with ids inside the vocabulary, log-probs finite and ≤ 0, and each top-k
    /// most likely first.
    fn check(
        &self,
        answer: &ScoreResponse,
        batch: &SequenceBatch,
        top_k: usize,
        full: bool,
    ) -> Result<()> {
        if answer.results.len() != batch.len() {
            return Err(self.client.error(format!(
                "{} results for {} sequences",
                answer.results.len(),
                batch.len()
            )));
        }
        let vocab = self.info.vocab_size;
        for (b, (scored, response)) in answer.results.iter().zip(batch.responses()).enumerate() {
            let len = response.len();
            let rows_ok = |rows: &[Vec<f32>], width: usize| {
                rows.len() == len && rows.iter().all(|r| r.len() == width)
            };
            let ok = scored.logprobs.len() == len
                && (top_k == 0
                    || (rows_ok(&scored.top_logprobs, top_k)
                        && scored.top_ids.len() == len
                        && scored.top_ids.iter().all(|r| {
                            r.len() == top_k && r.iter().all(|&id| (id as usize) < vocab)
                        })))
                && (!full || rows_ok(&scored.full_logprobs, vocab));
            if !ok {
                return Err(self.client.error(format!(
                    "result {b} does not match its request ({len} response tokens, top_k \
                     {top_k}{})",
                    if full { ", full log-probs" } else { "" }
                )));
            }
            let values = scored
                .logprobs
                .iter()
                .chain(scored.top_logprobs.iter().flatten())
                .chain(scored.full_logprobs.iter().flatten());
            if let Some(bad) = values.copied().find(|&v| !is_log_prob(v)) {
                return Err(self.client.error(format!(
                    "result {b} holds the log-prob {bad}: expected finite values ≤ 0"
                )));
            }
            let sorted = |row: &Vec<f32>| row.windows(2).all(|w| w[0] >= w[1] - LOG_PROB_SLACK);
            if let Some(t) = scored.top_logprobs.iter().position(|row| !sorted(row)) {
                return Err(self.client.error(format!(
                    "result {b}, position {t}: its top-k log-probs are not sorted, most \
                     likely first"
                )));
            }
        }
        Ok(())
    }
}
