//! `opd serve` and the remote teacher: the scores that travel equal the in-process teacher's,
//! a teacher with another vocabulary is refused, malformed requests are JSON 4xx naming the
//! field, and a teacher that goes away fails a step before its first update.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use opd_cli::server::{ServeOptions, ServerState, serve};
use opd_divergences::TeacherTarget;
use opd_policy::{ChatTokenizer, Llama, LlamaConfig, Policy, SequenceBatch};
use opd_tasks::{ExactAnswer, Task};
use opd_teachers::{
    External, Remote, RemoteOptions, Request, Teacher, TeacherError, TeacherOutput, TeacherSupport,
};
use opd_trainers::{Objective, OpdConfig, SamplingConfig, TrainConfig, TrainError, Trainer};

type A = Autodiff<Flex>;

const TEMPLATE: &str = "{% for m in messages %}{{ m.content }}{% endfor %}\
                        {% if add_generation_prompt %}={% endif %}";

fn tokenizer(alphabet: &str) -> ChatTokenizer {
    ChatTokenizer::characters(alphabet, TEMPLATE).unwrap()
}

fn config() -> LlamaConfig {
    opd_cli::config::ScratchModel {
        alphabet: "0123456789+".into(),
        layers: 1,
        hidden_size: 32,
        intermediate_size: 64,
        heads: 2,
        max_positions: 32,
        ..Default::default()
    }
    .llama_config()
}

/// A server of `model` on a free loopback port, and what stops it.
struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(model: Llama<Flex>, options: ServeOptions) -> Self {
        let state = ServerState::start(model, &tokenizer("0123456789+"), "tiny", options);
        Self::on(state, "127.0.0.1:0".parse().unwrap())
    }

    fn on(state: Arc<ServerState>, addr: SocketAddr) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, address) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                bound.send(listener.local_addr().unwrap()).unwrap();
                serve(listener, state, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        Self {
            addr: address.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn batch() -> SequenceBatch {
    SequenceBatch::new(
        vec![vec![1, 2, 11, 3], vec![4, 11, 5]],
        vec![vec![6, 7, 0], vec![8, 9, 10, 0]],
    )
    .unwrap()
}

fn host<const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() || y.is_finite())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn options(url: String) -> RemoteOptions {
    let mut options = RemoteOptions::new(url);
    options.timeout = Duration::from_secs(20);
    options.wait = Duration::from_secs(2);
    options
}

#[test]
fn served_scores_equal_the_in_process_teachers() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let student = Llama::<A>::init(&config(), 4, &Default::default());
    let tok = tokenizer("0123456789+");
    let server = Running::start(teacher.clone(), ServeOptions::new(32));
    let remote = Remote::connect(options(server.url()), &tok, student.vocab_size()).unwrap();
    let local = External::<A>::new(teacher, &tok, &student, &tok).unwrap();
    let b = batch();
    for support in [
        TeacherSupport::SampledToken,
        TeacherSupport::TopK(5),
        TeacherSupport::Logits,
    ] {
        for temperature in [1.0, 0.7] {
            let request = Request::new(support, temperature).unwrap();
            let (served, here) = (
                remote.outputs(&student, &b, &request).unwrap(),
                local.outputs(&student, &b, &request).unwrap(),
            );
            let what = format!("{support:?} at τ = {temperature}");
            match (served, here) {
                (
                    TeacherOutput::SampledToken { log_probs: a, .. },
                    TeacherOutput::SampledToken { log_probs: b, .. },
                ) => assert!(max_diff(&host(a), &host(b)) < 1e-5, "{what}"),
                (
                    TeacherOutput::Distribution {
                        target:
                            TeacherTarget::TopK {
                                ids: ia,
                                log_probs: a,
                            },
                        ..
                    },
                    TeacherOutput::Distribution {
                        target:
                            TeacherTarget::TopK {
                                ids: ib,
                                log_probs: b,
                            },
                        ..
                    },
                ) => {
                    assert!(max_diff(&host(a), &host(b)) < 1e-5, "{what}");
                    let ids = |t: Tensor<A, 3, burn::tensor::Int>| {
                        t.into_data().convert::<i64>().into_vec::<i64>().unwrap()
                    };
                    // Ties aside, the same tokens in the same order; padding holds id 0.
                    assert_eq!(ids(ia), ids(ib), "{what}");
                }
                (
                    TeacherOutput::Distribution {
                        target: TeacherTarget::Logits(x),
                        ..
                    },
                    TeacherOutput::Distribution {
                        target: TeacherTarget::Logits(y),
                        ..
                    },
                ) => {
                    // The served logits are log-probs × τ: the same distribution at τ.
                    let p = |z: Tensor<A, 3>| {
                        host(burn::tensor::activation::softmax(
                            z.div_scalar(temperature),
                            2,
                        ))
                    };
                    let mask = b.response_mask_host();
                    let (pa, pb) = (p(x), p(y));
                    let v = 12;
                    for (position, counted) in mask.iter().enumerate() {
                        if *counted {
                            let range = position * v..(position + 1) * v;
                            assert!(
                                max_diff(&pa[range.clone()], &pb[range]) < 1e-5,
                                "{what} at {position}"
                            );
                        }
                    }
                }
                _ => panic!("{what}: the served support differs from the local one"),
            }
        }
    }
    let per_token = remote.bytes_per_token().unwrap();
    assert!(per_token > 0.0, "{per_token}");
}

#[test]
fn a_teacher_with_another_vocabulary_is_refused_when_connecting() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let server = Running::start(teacher, ServeOptions::new(32));
    // Same size, other tokens: the token tables' checksums differ.
    let other = tokenizer("abcdefghij+");
    match Remote::connect(options(server.url()), &other, 12) {
        Err(TeacherError::VocabularyMismatch { .. }) => {}
        other => panic!("expected a vocabulary mismatch, got {other:?}"),
    }
    match Remote::connect(options(server.url()), &tokenizer("0123456789+"), 13) {
        Err(TeacherError::VocabularyMismatch {
            teacher: 12,
            student: 13,
            ..
        }) => {}
        other => panic!("expected a vocabulary mismatch, got {other:?}"),
    }
}

/// `POST /v1/score` with `body` (and a bearer `token`): the status and the JSON body.
fn post(url: &str, body: &[u8], token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = ureq::post(&format!("{url}/v1/score"))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(20));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let (status, text) = match request.send_bytes(body) {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        Err(e) => panic!("transport: {e}"),
    };
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
    (status, json)
}

#[test]
fn malformed_requests_are_json_4xx_naming_the_field_and_the_server_lives_on() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let mut limits = ServeOptions::new(32);
    limits.token = Some("secret".into());
    limits.max_body_bytes = 4096;
    let server = Running::start(teacher, limits);
    let url = server.url();
    let good = r#"{"sequences": [{"context": [1, 2], "response": [3, 0]}], "top_k": 2}"#;
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        (
            r#"{"sequences": [{"context": [1], "response": [99]}]}"#.into(),
            400,
            Some("sequences[0].response"),
        ),
        (
            r#"{"sequences": [{"context": [], "response": [1]}]}"#.into(),
            400,
            Some("sequences[0].context"),
        ),
        (r#"{"sequences": []}"#.into(), 400, Some("sequences")),
        (
            r#"{"sequences": [{"context": [1], "response": [2]}], "temperature": 0}"#.into(),
            400,
            Some("temperature"),
        ),
        (
            r#"{"sequences": [{"context": [1], "response": [2]}], "top_k": 1000}"#.into(),
            400,
            Some("top_k"),
        ),
        (
            format!(
                r#"{{"sequences": [{{"context": {:?}, "response": [2]}}]}}"#,
                vec![1; 40]
            ),
            400,
            Some("sequences[0]"),
        ),
        (
            r#"{"sequences": [{"context": [1], "response": [2], "extra": 1}]}"#.into(),
            400,
            None,
        ),
        (good[..good.len() / 2].into(), 400, None),
        ("\u{0}\u{1}garbage".into(), 400, None),
        ("x".repeat(5000), 413, None),
    ];
    for (body, status, field) in &cases {
        let (got, json) = post(&url, body.as_bytes(), Some("secret"));
        assert_eq!(got, *status, "{body:.80}: {json}");
        assert!(json["error"]["message"].is_string(), "{json}");
        if let Some(field) = field {
            assert_eq!(json["error"]["field"], *field, "{body:.80}: {json}");
        }
    }
    // Random bodies: always a JSON 4xx, never a crash.
    let mut seed = 7u64;
    for _ in 0..50 {
        let len = (seed % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect();
        let (got, json) = post(&url, &bytes, Some("secret"));
        assert!((400..500).contains(&got), "{got} {json}");
    }
    let (got, json) = post(&url, good.as_bytes(), None);
    assert_eq!(
        (got, json["error"]["field"].clone()),
        (401, "Authorization".into())
    );
    let (got, json) = post(&url, good.as_bytes(), Some("secret"));
    assert_eq!(got, 200, "{json}");
    assert_eq!(
        json["results"][0]["top_ids"][0].as_array().unwrap().len(),
        2
    );
}

#[test]
fn a_teacher_that_goes_away_fails_the_step_before_its_first_update() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let tok = tokenizer("0123456789+");
    let student = Llama::<A>::init(&config(), 4, &Default::default());
    let state = ServerState::start(teacher, &tok, "tiny", ServeOptions::new(32));
    let mut server = Running::on(Arc::clone(&state), "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let remote = Remote::connect(options(server.url()), &tok, student.vocab_size()).unwrap();
    let request = Request::new(TeacherSupport::TopK(3), 1.0).unwrap();
    remote.outputs(&student, &batch(), &request).unwrap();
    server.stop();
    let started = std::time::Instant::now();
    match remote.outputs(&student, &batch(), &request) {
        Err(TeacherError::Remote { problem, .. }) => {
            assert!(problem.contains("longer than the 2 s"), "{problem}")
        }
        other => panic!("expected the teacher to be missed, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Back on the same address: the next request is answered.
    let _server = Running::on(state, addr);
    remote.outputs(&student, &batch(), &request).unwrap();
    // The student's weights are untouched by any of this (no graph reaches a teacher).
    let weights = |m: &Llama<A>| host(m.embed_tokens.weight.val());
    assert_eq!(
        weights(&student),
        weights(&Llama::<A>::init(&config(), 4, &Default::default()))
    );
}

/// Single-digit sums whose answers the tiny model can spell.
fn sums() -> Vec<Task> {
    (0..6)
        .map(|i| Task::with_answer(format!("{i}+{}", i + 1), format!("{}", 2 * i + 1)))
        .collect()
}

#[test]
fn an_opd_step_whose_teacher_is_gone_changes_nothing_and_the_next_one_goes_on() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let tok = tokenizer("0123456789+");
    let student = Llama::<A>::init(&config(), 4, &Default::default());
    let state = ServerState::start(teacher, &tok, "tiny", ServeOptions::new(32));
    let mut server = Running::on(Arc::clone(&state), "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let remote = Remote::connect(options(server.url()), &tok, student.vocab_size()).unwrap();
    let config = TrainConfig {
        steps: 3,
        prompts_per_step: 2,
        micro_batch: 2,
        sampling: SamplingConfig {
            max_new_tokens: 3,
            ..SamplingConfig::default()
        },
        objective: Objective::Opd(OpdConfig::default()),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::builder(config, student, tok, sums(), ExactAnswer)
        .teacher(remote)
        .build()
        .unwrap();
    trainer.step().unwrap();
    let weights = |t: &Trainer<A>| host(t.student().embed_tokens.weight.val());
    let (before, spent) = (weights(&trainer), trainer.tokens_spent());
    server.stop();
    match trainer.step() {
        Err(TrainError::Teacher(TeacherError::Remote { .. })) => {}
        other => panic!(
            "expected the teacher to be missed, got {:?}",
            other.map(|_| ())
        ),
    }
    assert_eq!(trainer.steps_done(), 1);
    assert_eq!(trainer.tokens_spent(), spent);
    assert_eq!(weights(&trainer), before, "no half-applied step");
    let _server = Running::on(state, addr);
    let metrics = trainer.step().unwrap();
    assert_eq!((metrics.step, trainer.steps_done()), (1, 2));
}
