//! The remote teacher against a server that answers badly: a `Retry-After` of 2⁶⁴ − 1 s,
//! log-probs that cannot be log-probs, an unsorted top-k, an answer past the size limit. Each
//! is a clear error, never a panic, a hang or silent garbage.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use opd_policy::{Architecture, ChatTokenizer, Llama, LlamaConfig, Policy, SequenceBatch};
use opd_teachers::remote::protocol::{ModelInfo, token_table_crc32};
use opd_teachers::{Remote, RemoteOptions, Request, Teacher, TeacherSupport};

type A = Autodiff<Flex>;

const TEMPLATE: &str = "{% for m in messages %}{{ m.content }}{% endfor %}";

fn tokenizer() -> ChatTokenizer {
    ChatTokenizer::characters("0123456789+", TEMPLATE).unwrap()
}

fn student() -> Llama<A> {
    let config = LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size: tokenizer().vocab_size(),
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 32,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
    };
    Llama::init(&config, 1, &Default::default())
}

/// A server on loopback: `GET /v1/model` describes the student's vocabulary, and every
/// `POST /v1/score` gets `score` (a status line's code, extra headers, a body).
fn server(score: impl Fn() -> (u16, String, String) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    let info = ModelInfo {
        name: "hostile".into(),
        vocab_size: vocab,
        tokenizer_size: vocab,
        token_table_crc32: token_table_crc32(
            (0..vocab as u32).map(|id| tok.id_to_token(id).unwrap_or_default()),
        ),
        bos: tok.special.bos,
        eos: tok.special.eos.clone(),
        max_context: 32,
    };
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let _ = reader.by_ref().take(length).read_to_end(&mut Vec::new());
            let (code, headers, body) = match first.starts_with("GET /v1/model ") {
                true => (200, String::new(), serde_json::to_string(&info).unwrap()),
                false => score(),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n{headers}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// The client's error for one top-3 scoring call of a two-token response.
fn error_of(url: String, answer_bytes: u64) -> String {
    let mut options = RemoteOptions::new(url);
    options.wait = Duration::from_secs(2);
    options.timeout = Duration::from_secs(10);
    options.max_answer_bytes = answer_bytes;
    let student = student();
    let remote = Remote::connect(options, &tokenizer(), student.vocab_size()).unwrap();
    let batch = SequenceBatch::new(vec![vec![1, 2]], vec![vec![3, 4]]).unwrap();
    let request = Request::new(TeacherSupport::TopK(3), 1.0).unwrap();
    match remote.outputs(&student, &batch, &request) {
        Ok(_) => panic!("a bad answer was accepted"),
        Err(e) => e.to_string(),
    }
}

/// A score answer written by hand (JSON cannot say ±∞, but `1e39` becomes +∞ as an f32).
fn answer(logprobs: &str, top: &str) -> String {
    format!(
        r#"{{"results": [{{"logprobs": {logprobs}, "top_ids": [[1, 2, 3], [1, 2, 3]],
            "top_logprobs": [{top}, {top}]}}]}}"#
    )
}

#[test]
fn a_retry_after_of_two_to_the_64_seconds_is_held_within_a_minute_and_ends_the_wait() {
    let url = server(|| {
        (
            503,
            "Retry-After: 18446744073709551615\r\n".into(),
            "{}".into(),
        )
    });
    let clock = Instant::now();
    let error = error_of(url, 1 << 20);
    assert!(error.contains("longer than the 2 s"), "{error}");
    assert!(clock.elapsed() < Duration::from_secs(5));
}

#[test]
fn answers_that_are_not_log_probs_are_refused() {
    let cases = [
        (answer("[1e39, -1.0]", "[-0.5, -1.0, -2.0]"), "log-prob inf"),
        (answer("[0.5, -1.0]", "[-0.5, -1.0, -2.0]"), "log-prob 0.5"),
        (
            answer("[-0.1, -1.0]", "[-0.5, -1e39, -2.0]"),
            "log-prob -inf",
        ),
        (answer("[-0.1, -1.0]", "[-2.0, -1.0, -0.5]"), "not sorted"),
    ];
    for (body, expected) in cases {
        let url = server(move || (200, String::new(), body.clone()));
        let error = error_of(url, 1 << 20);
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

#[test]
fn an_answer_past_the_size_limit_is_an_error_naming_the_setting() {
    let body = answer("[-0.1, -1.0]", "[-0.5, -1.0, -2.0]");
    let size = body.len() as u64;
    let url = server(move || (200, String::new(), body.clone()));
    let error = error_of(url, size - 1);
    assert!(error.contains("max_answer_bytes"), "{error}");
}
