//! `opd serve` and the remote teacher: the scores that travel equal the in-process teacher's,
//! a teacher with another vocabulary is refused, malformed requests are JSON 4xx naming the
//! field, and a teacher that goes away fails a step before its first update.

use std::sync::Arc;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use opd_cli::server::{ServeOptions, ServerState};
use opd_divergences::TeacherTarget;
use opd_policy::{ChatTokenizer, Llama, Policy, SequenceBatch};
use opd_tasks::{ExactAnswer, Task};
use opd_teachers::{
    External, Remote, RemoteOptions, Request, Teacher, TeacherError, TeacherOutput, TeacherSupport,
};
use opd_trainers::{Objective, OpdConfig, SamplingConfig, TrainConfig, TrainError, Trainer};
use proptest::prelude::*;

type A = Autodiff<Flex>;

#[path = "support/serving.rs"]
mod serving;
use serving::{Running, config, tokenizer};

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

/// The log-probs of a sampled-token or top-k output, on the host.
fn log_probs(output: TeacherOutput<A>) -> Vec<f32> {
    match output {
        TeacherOutput::SampledToken { log_probs, .. } => host(log_probs),
        TeacherOutput::Distribution {
            target: TeacherTarget::TopK { log_probs, .. },
            ..
        } => host(log_probs),
        other => panic!("{other:?}"),
    }
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
    let local = External::new(teacher, &tok, &student, &tok).unwrap();
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

/// A served tiny teacher that can be stopped and started again on its address, a client that
/// waits `wait` for it, and the student.
struct Restartable {
    state: Arc<ServerState>,
    server: Running,
    remote: Remote,
    student: Llama<A>,
    tok: ChatTokenizer,
}

fn restartable(wait: Duration) -> Restartable {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let tok = tokenizer("0123456789+");
    let student = Llama::<A>::init(&config(), 4, &Default::default());
    let state = ServerState::start(teacher, &tok, "tiny", ServeOptions::new(32));
    let server = Running::on(Arc::clone(&state), "127.0.0.1:0".parse().unwrap());
    let mut client = options(server.url());
    client.wait = wait;
    let remote = Remote::connect(client, &tok, student.vocab_size()).unwrap();
    Restartable {
        state,
        server,
        remote,
        student,
        tok,
    }
}

#[test]
fn a_teacher_that_goes_away_fails_the_step_before_its_first_update() {
    let Restartable {
        state,
        mut server,
        remote,
        student,
        ..
    } = restartable(Duration::from_secs(2));
    let addr = server.addr;
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
    let Restartable {
        state,
        mut server,
        remote,
        student,
        tok,
    } = restartable(Duration::from_secs(2));
    let addr = server.addr;
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

/// `opd serve` as a process on a free port: the child and its URL.
/// A scratch teacher on the run files' characters, saved as a Hugging Face folder under
/// `folder` for `opd serve`.
fn teacher_folder(folder: &std::path::Path) -> std::path::PathBuf {
    let scratch = opd_cli::config::ScratchModel {
        alphabet: "0123456789+".into(),
        layers: 1,
        hidden_size: 32,
        intermediate_size: 64,
        heads: 2,
        max_positions: 16,
        seed: 5,
    };
    let teacher = Llama::<Flex>::init(&scratch.llama_config(), 5, &Default::default());
    let tok =
        ChatTokenizer::characters(&scratch.alphabet, opd_cli::config::SCRATCH_TEMPLATE).unwrap();
    let model_dir = folder.join("teacher");
    opd_policy::save(&teacher, &tok, &model_dir, opd_policy::SaveDtype::F32).unwrap();
    model_dir
}

/// An OPD run file (top-4 divergence on small sums) writing to `run`, its teacher served at
/// `url` and waited for `wait_seconds`.
fn served_run(
    run: &std::path::Path,
    url: &str,
    steps: usize,
    wait_seconds: u64,
    checkpoint_every: Option<usize>,
) -> String {
    let checkpoints = checkpoint_every
        .map(|n| format!("checkpoint_every = {n}\n"))
        .unwrap_or_default();
    format!(
        r#"
[model.scratch]
alphabet = "0123456789+"
layers = 1
hidden_size = 32
intermediate_size = 64
heads = 2
max_positions = 16

[teacher]
url = "{url}"
wait_seconds = {wait_seconds}

[data.arithmetic]
max_operand = 4
train_tasks = 20
test_tasks = 5

[output]
dir = "{}"
{checkpoints}
[train]
steps = {steps}
prompts_per_step = 4
micro_batch = 4
sampling = {{ max_new_tokens = 3 }}
objective = {{ method = "opd", form = "divergence", teacher_top_k = 4 }}
"#,
        run.display()
    )
}

/// An `opd serve` process, killed when dropped: a server left running would hold the test's
/// output open, and a failing test would hang instead of failing.
struct ServeProcess(std::process::Child);

impl ServeProcess {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_process(model: &std::path::Path, listen: &str) -> (ServeProcess, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_opd"))
        .args(["serve", "--listen", listen, "--model"])
        .arg(model)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("opd serve says where it listens")
            .unwrap();
        if let Some(at) = line.find("http://") {
            break line[at..].trim().to_string();
        }
    };
    // Keep draining its stderr so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (ServeProcess(child), url)
}

#[test]
fn opd_train_learns_from_a_teacher_served_by_opd_serve() {
    let folder = tempfile::tempdir().unwrap();
    let model_dir = teacher_folder(folder.path());
    let (mut server, url) = serve_process(&model_dir, "127.0.0.1:0");
    let run = folder.path().join("run");
    let file = folder.path().join("opd.toml");
    std::fs::write(&file, served_run(&run, &url, 4, 5, None)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opd"))
        .arg("train")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let records = opd_cli::run::read_metrics(&run.join(opd_cli::run::METRICS)).unwrap();
    let divergences: Vec<f64> = records
        .iter()
        .filter_map(|r| r.train())
        .filter_map(|m| m.divergence_mean)
        .collect();
    assert_eq!(divergences.len(), 4, "{stderr}");
    assert!(divergences.iter().all(|d| d.is_finite() && *d >= 0.0));
    // With the server gone, a resumed run stops: it waits `wait_seconds`, then says why.
    server.stop();
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("steps = 4", "steps = 6");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opd"))
        .args(["train", "--resume"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(stderr.contains(&url) && stderr.contains("5 s"), "{stderr}");
}

#[test]
fn the_vllm_endpoints_serve_the_same_scores_to_a_vllm_client() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let student = Llama::<A>::init(&config(), 4, &Default::default());
    let tok = tokenizer("0123456789+");
    let server = Running::start(teacher, ServeOptions::new(32));
    let opd = Remote::connect(options(server.url()), &tok, student.vocab_size()).unwrap();
    let mut vllm_options = options(server.url());
    vllm_options.protocol = opd_teachers::remote::Protocol::Vllm {
        model: String::new(),
    };
    let vllm = Remote::connect(vllm_options, &tok, student.vocab_size()).unwrap();
    assert_eq!(vllm.info().name, "tiny");
    let b = batch();
    for support in [TeacherSupport::SampledToken, TeacherSupport::TopK(4)] {
        let request = Request::new(support, 1.0).unwrap();
        let (x, y) = (
            opd.outputs(&student, &b, &request).unwrap(),
            vllm.outputs(&student, &b, &request).unwrap(),
        );
        assert!(max_diff(&log_probs(x), &log_probs(y)) < 1e-6, "{support:?}");
    }
    // Every entry has an integer rank, as vLLM's (TRL sorts a position's entries by it): the
    // top entries 1..=k, the prompt's own token its rank over the whole vocabulary.
    let raw: serde_json::Value = ureq::post(&format!("{}/v1/completions", server.url()))
        .send_string(r#"{"prompt": [1, 2, 11, 3, 6, 7], "max_tokens": 1, "prompt_logprobs": 1}"#)
        .unwrap()
        .into_json()
        .unwrap();
    let positions = raw["choices"][0]["prompt_logprobs"].as_array().unwrap();
    assert!(positions[0].is_null());
    let mut outside = 0;
    for position in &positions[1..] {
        let entries = position.as_object().unwrap();
        let ranks: Vec<u64> = entries
            .values()
            .map(|e| e["rank"].as_u64().unwrap())
            .collect();
        assert!(ranks.contains(&1), "{position}");
        outside += usize::from(ranks.iter().any(|&r| r > 1));
    }
    assert!(
        outside > 0,
        "a prompt token outside the top 1 has its true rank"
    );
    // vLLM scores prompts at temperature 1: another is refused, not silently wrong.
    let hot = Request::new(TeacherSupport::TopK(4), 0.5).unwrap();
    match vllm.outputs(&student, &b, &hot) {
        Err(TeacherError::Remote { problem, .. }) => {
            assert!(problem.contains("temperature 1"), "{problem}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // A vLLM client with another vocabulary decodes the probe ids differently.
    let mut other = options(server.url());
    other.protocol = opd_teachers::remote::Protocol::Vllm {
        model: "tiny".into(),
    };
    match Remote::connect(other, &tokenizer("abcdefghij+"), 12) {
        Err(TeacherError::VocabularyMismatch { .. }) => {}
        other => panic!("expected a vocabulary mismatch, got {other:?}"),
    }
}

/// The keys of `value` at every level, as paths (`choices[].prompt_logprobs`); a position's
/// entries (token ids) count as one key, `*`.
fn key_paths(value: &serde_json::Value, at: &str, into: &mut std::collections::BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            let ids = map.keys().all(|k| k.parse::<u32>().is_ok()) && !map.is_empty();
            for (key, inner) in map {
                let path = format!("{at}.{}", if ids { "*" } else { key });
                into.insert(path.clone());
                key_paths(inner, &path, into);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{at}[]"), into);
            }
        }
        _ => {}
    }
}

#[test]
fn the_completions_answer_has_every_field_of_vllms_and_refuses_what_asks_for_generation() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let server = Running::start(teacher, ServeOptions::new(32));
    let post = |body: &str| match ureq::post(&format!("{}/v1/completions", server.url()))
        .send_string(body)
    {
        Ok(r) => (200, r.into_json::<serde_json::Value>().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    };
    // What TRL's VLLMClient.get_sequence_logprobs sends.
    let (code, ours) = post(
        r#"{"model": "tiny", "prompt": [[1, 2, 11, 3], [4, 5]], "max_tokens": 1,
            "temperature": 1.0, "prompt_logprobs": 2}"#,
    );
    assert_eq!(code, 200, "{ours}");
    let vllm: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../teachers/tests/fixtures/vllm_completion_prompt_logprobs.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let (mut theirs, mut mine) = Default::default();
    key_paths(&vllm, "", &mut theirs);
    key_paths(&ours, "", &mut mine);
    // vLLM's engine-side transfer field has no meaning here.
    theirs.remove(".kv_transfer_params");
    let missing: Vec<_> = theirs.difference(&mine).collect();
    let extra: Vec<_> = mine.difference(&theirs).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(ours["usage"]["prompt_tokens"], 6);
    assert_eq!(ours["choices"][1]["index"], 1);
    // What would need generated tokens, or is not vLLM's, is a 400 naming the field, in
    // vLLM's error shape.
    for (body, field) in [
        (
            r#"{"prompt": [1, 2, 3], "prompt_logprobs": 2}"#,
            "max_tokens",
        ),
        (
            r#"{"prompt": [1, 2, 3], "max_tokens": 5, "prompt_logprobs": 2}"#,
            "max_tokens",
        ),
        (
            r#"{"prompt": [1, 2, 3], "max_tokens": 1}"#,
            "prompt_logprobs",
        ),
        (
            r#"{"prompt": [1, 2, 3], "max_tokens": 1, "prompt_logprobs": -2}"#,
            "prompt_logprobs",
        ),
        (
            r#"{"prompt": [1, 2, 3], "max_tokens": 1, "prompt_logprobs": 1, "logprobs": 1}"#,
            "logprobs",
        ),
        (
            r#"{"prompt": [1, 2, 3], "max_tokens": 1, "prompt_logprobs": 1, "n": 2}"#,
            "n",
        ),
        (
            r#"{"prompt": [1, 2, 3], "max_tokens": 1, "prompt_logprobs": 1, "stream": true}"#,
            "stream",
        ),
    ] {
        let (code, answer) = post(body);
        assert_eq!(code, 400, "{body}: {answer}");
        let error = &answer["error"];
        assert_eq!(error["param"], field, "{body}: {answer}");
        assert_eq!(error["type"], "BadRequestError");
        assert_eq!(error["code"], 400);
    }
    // -1 is the whole vocabulary (a few tokens here, within the default --max-logprobs of 20).
    let info: serde_json::Value = ureq::get(&format!("{}/v1/model", server.url()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let (code, whole) = post(r#"{"prompt": [1, 2, 3], "max_tokens": 0, "prompt_logprobs": -1}"#);
    assert_eq!(code, 200, "{whole}");
    let position = whole["choices"][0]["prompt_logprobs"][1]
        .as_object()
        .unwrap();
    assert_eq!(position.len() as u64, info["vocab_size"].as_u64().unwrap());
    let mass: f64 = position
        .values()
        .map(|e| e["logprob"].as_f64().unwrap().exp())
        .sum();
    assert!((mass - 1.0).abs() < 1e-4, "{mass}");
    let models: serde_json::Value = ureq::get(&format!("{}/v1/models", server.url()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["owned_by"], "opd");
    assert!(models["data"][0]["created"].as_u64().unwrap() > 1_700_000_000);
}

#[test]
fn many_clients_on_a_queue_of_one_all_get_their_scores() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let tok = tokenizer("0123456789+");
    let mut limits = ServeOptions::new(32);
    limits.queue = 1;
    limits.batch_rows = 2;
    let server = Running::start(teacher.clone(), limits);
    let student = Llama::<A>::init(&config(), 4, &Default::default());
    let local = External::new(teacher, &tok, &student, &tok).unwrap();
    let request = Request::new(TeacherSupport::TopK(3), 1.0).unwrap();
    let expected = log_probs(local.outputs(&student, &batch(), &request).unwrap());
    // Eight clients at once: the queue turns most away with 503 + Retry-After, and each
    // retries until it is served, with the scores it would have had alone.
    let url = server.url();
    let answers: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (url, tok) = (url.clone(), tok.clone());
                scope.spawn(move || {
                    let mut options = options(url);
                    options.wait = Duration::from_secs(60);
                    let student = Llama::<A>::init(&config(), 4, &Default::default());
                    let remote = Remote::connect(options, &tok, student.vocab_size()).unwrap();
                    let request = Request::new(TeacherSupport::TopK(3), 1.0).unwrap();
                    log_probs(remote.outputs(&student, &batch(), &request).unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for answer in answers {
        assert!(max_diff(&answer, &expected) < 1e-5);
    }
}

/// `steps` OPD steps (top-k divergence) of the same student with `teacher`; the losses.
fn opd_losses(teacher: Box<dyn Teacher<A>>, steps: usize) -> Vec<f64> {
    let run = TrainConfig {
        steps,
        prompts_per_step: 4,
        micro_batch: 2,
        seed: 3,
        sampling: SamplingConfig {
            max_new_tokens: 3,
            ..SamplingConfig::default()
        },
        objective: Objective::Opd(OpdConfig {
            form: opd_trainers::OpdForm::Divergence {
                divergence: opd_divergences::Divergence::ReverseKl,
                teacher_top_k: Some(4),
            },
            ..OpdConfig::default()
        }),
        ..TrainConfig::default()
    };
    let student = Llama::<A>::init(&config(), 4, &Default::default());
    let mut trainer = Trainer::builder(run, student, tokenizer("0123456789+"), sums(), ExactAnswer)
        .teacher_boxed(teacher)
        .build()
        .unwrap();
    let mut losses = Vec::new();
    trainer.train(|m| losses.push(m.loss)).unwrap();
    losses
}

#[test]
fn an_opd_run_with_the_served_teacher_takes_the_steps_of_the_same_teacher_in_process() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let tok = tokenizer("0123456789+");
    let student = Llama::<A>::init(&config(), 4, &Default::default());
    let server = Running::start(teacher.clone(), ServeOptions::new(32));
    let remote = Remote::connect(options(server.url()), &tok, student.vocab_size()).unwrap();
    let local = External::new(teacher, &tok, &student, &tok).unwrap();
    let (served, here) = (
        opd_losses(Box::new(remote), 4),
        opd_losses(Box::new(local), 4),
    );
    assert_eq!(served.len(), 4);
    for (s, h) in served.iter().zip(&here) {
        // JSON carries f32 log-probs exactly (shortest round-trip form).
        assert!(
            (s - h).abs() <= 1e-6 * h.abs().max(1.0),
            "{served:?} vs {here:?}"
        );
    }
}

#[test]
fn a_server_restarted_within_the_wait_is_survived() {
    let Restartable {
        state,
        mut server,
        remote,
        student,
        ..
    } = restartable(Duration::from_secs(30));
    let addr = server.addr;
    let request = Request::new(TeacherSupport::TopK(3), 1.0).unwrap();
    let before = remote.outputs(&student, &batch(), &request).unwrap();
    server.stop();
    // Killed; back two seconds later, while the client is still waiting.
    let restarted = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        Running::on(state, addr)
    });
    let after = remote.outputs(&student, &batch(), &request).unwrap();
    let _server = restarted.join().unwrap();
    assert_eq!(log_probs(before), log_probs(after));
}

#[test]
fn a_run_whose_served_teacher_dies_stops_with_a_checkpoint_and_resumes_once_it_is_back() {
    let folder = tempfile::tempdir().unwrap();
    let model_dir = teacher_folder(folder.path());
    let (mut server, url) = serve_process(&model_dir, "127.0.0.1:0");
    let run = folder.path().join("run");
    let file = folder.path().join("opd.toml");
    let text = |steps: usize| served_run(&run, &url, steps, 2, Some(1000));
    std::fs::write(&file, text(100_000)).unwrap();
    let trainer = std::process::Command::new(env!("CARGO_BIN_EXE_opd"))
        .arg("train")
        .arg(&file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A few steps in, the teacher goes away.
    let metrics = run.join(opd_cli::run::METRICS);
    let clock = std::time::Instant::now();
    let steps = |path: &std::path::Path| -> usize {
        opd_cli::run::read_metrics(path)
            .map(|r| r.iter().filter(|r| r.train().is_some()).count())
            .unwrap_or(0)
    };
    while steps(&metrics) < 3 {
        assert!(clock.elapsed() < Duration::from_secs(120), "no steps");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
    let out = trainer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains(&url) && stderr.contains("--resume"),
        "{stderr}"
    );
    // It stopped with a checkpoint of every step it finished, and nothing half-applied.
    let done = steps(&metrics);
    let checkpoints = opd_trainers::checkpoint::checkpoints(&run);
    assert_eq!(checkpoints.last().map(|(s, _)| *s), Some(done), "{stderr}");
    // The teacher is back on its address: the run resumes and finishes.
    let listen = url.trim_start_matches("http://").to_string();
    let (mut server, _) = serve_process(&model_dir, &listen);
    std::fs::write(&file, text(done + 2)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opd"))
        .args(["train", "--resume"])
        .arg(&file)
        .output()
        .unwrap();
    server.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(steps(&metrics), done + 2);
}

/// The limits a server left running needs: top entries capped at `max_logprobs`, tokens per
/// request and per `/detokenize` capped, a temperature floor, one padded batch per request
/// within the context; `GET /health` without a token; and requests from two clients whose
/// padded batches would not fit together are each answered, never failed by the other.
#[test]
fn limits_refuse_hostile_requests_and_no_client_fails_another() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let mut limits = ServeOptions::new(32);
    limits.token = Some("secret".into());
    limits.max_request_tokens = 200;
    limits.max_logprobs = 4;
    let server = Running::start(teacher, limits);
    let url = server.url();
    let seq = |context: usize, response: usize| {
        format!(
            r#"{{"context": {:?}, "response": {:?}}}"#,
            vec![1; context],
            vec![2; response]
        )
    };
    let cases = [
        (
            format!(r#"{{"sequences": [{}], "top_k": 5}}"#, seq(2, 2)),
            "top_k",
        ),
        (
            format!(r#"{{"sequences": [{}], "temperature": 1e-300}}"#, seq(2, 2)),
            "temperature",
        ),
        (
            format!(r#"{{"sequences": [{}]}}"#, vec![seq(10, 10); 11].join(",")),
            "sequences",
        ),
        (
            format!(r#"{{"sequences": [{}, {}]}}"#, seq(20, 2), seq(2, 20)),
            "sequences",
        ),
    ];
    for (body, field) in &cases {
        let (got, json) = post(&url, body.as_bytes(), Some("secret"));
        assert_eq!(
            (got, json["error"]["field"].as_str()),
            (400, Some(*field)),
            "{json}"
        );
    }
    let detokenize = ureq::post(&format!("{url}/detokenize"))
        .set("Authorization", "Bearer secret")
        .send_string(&format!(r#"{{"tokens": {:?}}}"#, vec![1; 201]));
    assert!(matches!(detokenize, Err(ureq::Error::Status(400, _))));
    let health = ureq::get(&format!("{url}/health")).call().unwrap();
    assert_eq!(health.status(), 200);
    // Eight clients at once, half with long contexts and half with long responses: each
    // request fits alone, two of different kinds do not fit one batch.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (url, body) = (
                    url.clone(),
                    match i % 2 {
                        0 => format!(r#"{{"sequences": [{}], "top_k": 2}}"#, seq(20, 2)),
                        _ => format!(r#"{{"sequences": [{}], "top_k": 2}}"#, seq(2, 20)),
                    },
                );
                scope.spawn(move || post(&url, body.as_bytes(), Some("secret")).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // What an operator watches: the refusals and the scores, by route and status.
    let metrics = ureq::get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let value = |line: &str| -> f64 {
        let found = metrics.lines().find(|l| l.starts_with(line));
        found
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(
        value(r#"opd_requests_total{route="/v1/score",status="400"} "#),
        4.0,
        "{metrics}"
    );
    assert_eq!(
        value(r#"opd_requests_total{route="/v1/score",status="200"} "#),
        8.0,
        "{metrics}"
    );
    assert_eq!(value("opd_scored_sequences_total "), 8.0, "{metrics}");
    assert_eq!(value("opd_scored_tokens_total "), 8.0 * 11.0, "{metrics}");
    assert!(
        value(r#"opd_request_duration_seconds_bucket{le="+Inf"} "#) >= 14.0,
        "{metrics}"
    );
}

/// A request body drawn at random for one of the scoring endpoints: shaped like the endpoint's
/// request with fields in and out of range (ids outside the vocabulary, empty or long
/// sequences, any `top_k` or `prompt_logprobs`, temperatures from 0 to 1e300, unknown
/// fields), or bytes that are not JSON at all.
fn hostile_body(vocab: u32) -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let id = prop_oneof![20 => 0..vocab, 1 => vocab..u32::MAX];
    let ids = proptest::collection::vec(id, 0..14);
    let sequence = (ids.clone(), ids.clone()).prop_map(
        |(context, response)| serde_json::json!({"context": context, "response": response}),
    );
    let temperature = prop_oneof![
        4 => Just(serde_json::json!(1.0)),
        1 => prop_oneof![Just(0.0), Just(-1.0), Just(1e-300), Just(1e300), 0.01f64..4.0]
            .prop_map(|t| serde_json::json!(t)),
        1 => Just(serde_json::json!("hot")),
    ];
    let count = prop_oneof![4 => 0i64..6, 1 => Just(-1i64), 1 => Just(49_152), 1 => Just(i64::MAX)];
    let score = (
        proptest::collection::vec(sequence, 0..5),
        count.clone(),
        temperature.clone(),
        any::<bool>(),
        proptest::option::weighted(0.1, "[a-z]{1,8}"),
    )
        .prop_map(|(sequences, top_k, temperature, full, extra)| {
            let mut body = serde_json::json!({
                "sequences": sequences, "top_k": top_k, "temperature": temperature, "full": full,
            });
            if let Some(extra) = extra {
                body[extra] = serde_json::json!(1);
            }
            ("/v1/score", body.to_string().into_bytes())
        });
    let completions = (
        proptest::collection::vec(ids.clone(), 0..4),
        proptest::option::of(0i64..3),
        any::<bool>(),
        proptest::option::of(count.clone()),
        proptest::option::weighted(0.1, count),
        proptest::option::weighted(0.1, 0i64..3),
        temperature,
    )
        .prop_map(
            |(prompts, max_tokens, echo, prompt_logprobs, logprobs, n, temperature)| {
                let prompt = match prompts.len() {
                    1 => serde_json::json!(prompts[0]),
                    _ => serde_json::json!(prompts),
                };
                let body = serde_json::json!({
                    "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "echo": echo,
                    "prompt_logprobs": prompt_logprobs, "logprobs": logprobs, "n": n,
                    "temperature": temperature,
                });
                ("/v1/completions", body.to_string().into_bytes())
            },
        );
    let detokenize = proptest::collection::vec(ids, 0..3).prop_map(|all| {
        let tokens: Vec<u32> = all.concat();
        (
            "/detokenize",
            serde_json::json!({"model": "tiny", "tokens": tokens})
                .to_string()
                .into_bytes(),
        )
    });
    let path = prop_oneof![
        Just("/v1/score"),
        Just("/v1/completions"),
        Just("/detokenize")
    ];
    let garbage = (path, proptest::collection::vec(any::<u8>(), 0..200));
    prop_oneof![3 => score, 3 => completions, 1 => detokenize, 1 => garbage]
}

/// Requests drawn at random (a fixed seed, 256 of them) are each answered 200 with scores of
/// the sizes asked for, finite and ≤ 0, or a JSON 4xx: never a 5xx, a hang or a dead server.
#[test]
fn requests_drawn_at_random_are_answered_200_or_a_json_4xx_and_the_server_lives_on() {
    let teacher = Llama::<Flex>::init(&config(), 3, &Default::default());
    let mut limits = ServeOptions::new(32);
    limits.max_body_bytes = 8192;
    let server = Running::start(teacher, limits);
    let url = server.url();
    let vocab = tokenizer("0123456789+").vocab_size() as u32;
    let config = ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(39),
        ..Default::default()
    };
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    proptest::test_runner::TestRunner::new(config)
        .run(&hostile_body(vocab), |(path, body)| {
            let sent = ureq::post(&format!("{url}{path}"))
                .set("Content-Type", "application/json")
                .timeout(Duration::from_secs(20))
                .send_bytes(&body);
            let (status, text) = match sent {
                Ok(r) => (r.status(), r.into_string().unwrap()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
                Err(e) => panic!("transport: {e}"),
            };
            *statuses.lock().unwrap().entry(status).or_default() += 1;
            let shown = String::from_utf8_lossy(&body);
            prop_assert!(
                status == 200 || (400..500).contains(&status),
                "{} {}: {}",
                status,
                shown,
                text
            );
            let answer: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{status} {text}: not JSON ({e})"));
            if status == 200 && path == "/v1/score" {
                let asked: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let results = answer["results"].as_array().unwrap();
                prop_assert_eq!(results.len(), asked["sequences"].as_array().unwrap().len());
                let k = asked["top_k"].as_u64().unwrap() as usize;
                for (r, s) in results.iter().zip(asked["sequences"].as_array().unwrap()) {
                    let len = s["response"].as_array().unwrap().len();
                    let values: Vec<f64> = r["logprobs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .chain(
                            r["top_logprobs"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .flat_map(|row| row.as_array().unwrap()),
                        )
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    prop_assert_eq!(r["logprobs"].as_array().unwrap().len(), len);
                    prop_assert!(
                        values.iter().all(|&v| v.is_finite() && v <= 1e-5),
                        "{}",
                        text
                    );
                    if k > 0 {
                        prop_assert!(
                            r["top_ids"].as_array().unwrap().iter().all(|row| row
                                .as_array()
                                .unwrap()
                                .len()
                                == k)
                        );
                    }
                }
            }
            if (400..500).contains(&status) {
                prop_assert!(answer["error"]["message"].is_string(), "{}", text);
            }
            Ok(())
        })
        .unwrap();
    // Both kinds of answer occur, and a good request is still scored.
    let statuses = statuses.into_inner().unwrap();
    assert!(statuses.get(&200).is_some_and(|&n| n >= 20), "{statuses:?}");
    assert!(statuses.get(&400).is_some_and(|&n| n >= 20), "{statuses:?}");
    let good = r#"{"sequences": [{"context": [1, 2], "response": [3, 0]}], "top_k": 2}"#;
    assert_eq!(post(&url, good.as_bytes(), None).0, 200);
}
