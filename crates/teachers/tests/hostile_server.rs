//! The remote teacher against a server that answers badly: a `Retry-After` of 2⁶⁴ − 1 s,
//! log-probs that cannot be log-probs, an unsorted top-k, an answer past the size limit. Each
//! is a clear error, never a panic, a hang or silent garbage; and answers drawn at random,
//! whole or mutated, are accepted exactly when an independent check of the protocol says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use opd_divergences::TeacherTarget;
use opd_policy::{Architecture, ChatTokenizer, Llama, LlamaConfig, Policy, SequenceBatch};
use opd_teachers::remote::protocol::{ModelInfo, token_table_crc32};
use opd_teachers::{Remote, RemoteOptions, Request, Teacher, TeacherOutput, TeacherSupport};
use proptest::prelude::*;

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

/// What the client must accept for responses of `lens` tokens at top `k` over `vocab`: one
/// result per sequence, rows of the right sizes, ids inside the vocabulary, log-probs finite
/// (as f32) and ≤ 0 within 1e-4, each top-k row most likely first within 1e-4.
fn acceptable(answer: &serde_json::Value, lens: &[usize], k: usize, vocab: u32) -> bool {
    let log_prob = |v: &serde_json::Value| {
        v.as_f64()
            .map(|v| v as f32)
            .is_some_and(|v| v.is_finite() && v <= 1e-4)
    };
    let rows = |v: &serde_json::Value,
                len: usize,
                width: usize,
                cell: &dyn Fn(&serde_json::Value) -> bool| {
        v.as_array().is_some_and(|rows| {
            rows.len() == len
                && rows.iter().all(|row| {
                    row.as_array()
                        .is_some_and(|r| r.len() == width && r.iter().all(cell))
                })
        })
    };
    let Some(results) = answer["results"].as_array() else {
        return false;
    };
    results.len() == lens.len()
        && results.iter().zip(lens).all(|(r, &len)| {
            let sorted = r["top_logprobs"].as_array().is_some_and(|rows| {
                rows.iter().all(|row| {
                    let row: Vec<f32> = row
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                        .collect();
                    row.windows(2).all(|w| w[0] >= w[1] - 1e-4)
                })
            });
            r["logprobs"]
                .as_array()
                .is_some_and(|v| v.len() == len && v.iter().all(log_prob))
                && rows(&r["top_ids"], len, k, &|id| {
                    id.as_u64().is_some_and(|id| id < vocab as u64)
                })
                && rows(&r["top_logprobs"], len, k, &log_prob)
                && sorted
        })
}

/// An answer for responses of `lens` tokens at top 3: well formed, then perhaps broken in one
/// place (a row cut or lengthened, a value out of range, a row unsorted, an id outside the
/// vocabulary, a result dropped), or bytes that are not an answer at all.
fn answers(lens: Vec<usize>, vocab: u32) -> impl Strategy<Value = String> {
    let value = prop_oneof![
        60 => -30.0f64..0.0,
        1 => Just(0.0),
        1 => prop_oneof![Just(1e39), Just(-1e39), 0.001f64..5.0, Just(5e-5)],
    ];
    let row = move || proptest::collection::vec(value.clone(), 3);
    let result = move |len: usize| {
        (
            proptest::collection::vec(-30.0f64..0.0, len),
            proptest::collection::vec(
                proptest::collection::vec(prop_oneof![80 => 0..vocab, 1 => vocab..u32::MAX], 3),
                len,
            ),
            proptest::collection::vec(row(), len),
        )
    };
    let whole = lens.iter().map(|&len| result(len)).collect::<Vec<_>>();
    let structured =
        (whole, 0usize..8, any::<prop::sample::Index>()).prop_map(|(mut results, flaw, at)| {
            if results.is_empty() {
                return serde_json::json!({ "results": [] });
            }
            let r = at.index(results.len());
            let (logprobs, ids, top) = &mut results[r];
            match flaw {
                0 => {
                    logprobs.pop();
                }
                1 => top.iter_mut().for_each(|row| row.push(-40.0)),
                2 => {
                    ids.push(vec![0, 1, 2]);
                }
                3 => {
                    results.pop();
                }
                4 => top.iter_mut().for_each(|row| row.reverse()),
                _ => {}
            }
            let results: Vec<serde_json::Value> = results
                .into_iter()
                .map(|(logprobs, ids, mut top)| {
                    // Keep the generated rows sorted unless a flaw unsorted them on purpose.
                    if flaw != 4 {
                        top.iter_mut()
                            .for_each(|row| row.sort_by(|a, b| b.total_cmp(a)));
                    }
                    serde_json::json!({ "logprobs": logprobs, "top_ids": ids, "top_logprobs": top })
                })
                .collect();
            serde_json::json!({ "results": results })
        });
    prop_oneof![
        6 => structured.prop_map(|v| v.to_string()),
        1 => "\\PC{0,80}",
        1 => structured_cut(),
    ]
}

/// A valid-looking answer cut at an arbitrary byte.
fn structured_cut() -> impl Strategy<Value = String> {
    (0usize..60).prop_map(|cut| {
        let text = r#"{"results": [{"logprobs": [-0.1, -1.0], "top_ids": [[1, 2, 3]]}]}"#;
        text[..cut.min(text.len())].to_string()
    })
}

/// Whatever the server answers, the client returns the answer's values exactly when the
/// protocol's check accepts it, and a clear error otherwise (one server and client, 192 drawn
/// answers on a fixed seed).
#[test]
fn answers_are_accepted_exactly_when_the_protocol_allows_them() {
    let body: &'static std::sync::Mutex<String> = Box::leak(Box::default());
    let url = server(move || (200, String::new(), body.lock().unwrap().clone()));
    let mut options = RemoteOptions::new(url);
    options.wait = Duration::from_secs(1);
    options.timeout = Duration::from_secs(10);
    let student = student();
    let vocab = student.vocab_size() as u32;
    let remote = Remote::connect(options, &tokenizer(), student.vocab_size()).unwrap();
    let batch =
        SequenceBatch::new(vec![vec![1, 2], vec![4]], vec![vec![3, 4], vec![5, 6, 7]]).unwrap();
    let request = Request::new(TeacherSupport::TopK(3), 1.0).unwrap();
    let config = ProptestConfig {
        cases: 192,
        rng_seed: proptest::test_runner::RngSeed::Fixed(39),
        ..Default::default()
    };
    let (accepted, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    proptest::test_runner::TestRunner::new(config)
        .run(&answers(vec![2, 3], vocab), |answer| {
            *body.lock().unwrap() = answer.clone();
            let expected = serde_json::from_str::<serde_json::Value>(&answer)
                .is_ok_and(|v| acceptable(&v, &[2, 3], 3, vocab));
            match remote.outputs(&student, &batch, &request) {
                Ok(output) => {
                    prop_assert!(expected, "accepted: {}", answer);
                    accepted.set(accepted.get() + 1);
                    let TeacherOutput::Distribution {
                        target: TeacherTarget::TopK { log_probs, .. },
                        ..
                    } = output
                    else {
                        panic!("not a top-k answer")
                    };
                    let got: Vec<f32> = log_probs.into_data().convert::<f32>().into_vec().unwrap();
                    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                    let first = v["results"][0]["top_logprobs"][0][0].as_f64().unwrap() as f32;
                    prop_assert_eq!(got[0], first);
                }
                Err(e) => {
                    prop_assert!(!expected, "refused a valid answer ({}): {}", e, answer);
                    refused.set(refused.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    // Both outcomes occur, so the check is exercised both ways.
    let (accepted, refused) = (accepted.get(), refused.get());
    assert!(
        accepted > 20 && refused > 20,
        "{accepted} accepted, {refused} refused"
    );
}
