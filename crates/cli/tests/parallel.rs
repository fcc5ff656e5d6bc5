//! `opd train` on several workers: two threads of one process, two processes joined over
//! loopback, and two processes of two workers each reach the weights of one worker; a killed node stops the
//! other with an error, and the run resumes from its last checkpoint on one worker.

#[path = "support/runs.rs"]
mod runs;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opd_cli::run::{METRICS, read_metrics};
use runs::{OPD, opd, run_text, stderr, train_losses};

/// As in the trainers' tests: two workers add the gradients of two halves where one worker
/// accumulates micro-batch by micro-batch, and AdamW carries the rounding into the weights.
const TOLERANCE: f32 = 1e-3;

/// Every tensor of a finished run's `final/model.safetensors`.
fn final_weights(run: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(run.join("final/model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

fn largest_difference(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// The GRPO run file of the run-folder tests with another `objective`, and `parallel`.
fn write_run(
    folder: &Path,
    name: &str,
    steps: usize,
    objective: &str,
    parallel: &str,
) -> std::path::PathBuf {
    let path = folder.join(format!("{name}.toml"));
    // Room for the self-teacher's privileged prompt.
    let text = run_text(&folder.join(name), steps)
        .replace(
            r#"objective = { method = "grpo", group_size = 4 }"#,
            &format!("objective = {objective}"),
        )
        .replace("max_positions = 16", "max_positions = 192");
    let text = format!("{text}\n{parallel}\n");
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The secret the nodes of these runs share.
const SECRET: &str = "a run secret for the tests, 32 b";

fn spawn(file: &Path, args: &[&str]) -> Child {
    spawn_with_secret(file, args, SECRET)
}

fn spawn_with_secret(file: &Path, args: &[&str], secret: &str) -> Child {
    Command::new(OPD)
        .env("OPD_NODE_SECRET", secret)
        .arg("train")
        .args(args)
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The one-worker run of `steps` steps the parallel runs are compared with.
fn one_worker(folder: &Path, steps: usize, objective: &str) -> BTreeMap<String, Vec<f32>> {
    let file = write_run(folder, "one", steps, objective, "");
    let out = opd(&["train"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    final_weights(&folder.join("one"))
}

fn assert_close_to_one(folder: &Path, run: &str, one: &BTreeMap<String, Vec<f32>>) {
    let two = final_weights(&folder.join(run));
    let diff = largest_difference(&two, one);
    assert!(diff <= TOLERANCE, "{run}: {diff}");
    let start = train_losses(&folder.join("one"));
    let losses = train_losses(&folder.join(run));
    assert_eq!(losses.len(), start.len());
    for ((_, a), (_, b)) in losses.iter().zip(&start) {
        assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{run}: {a} vs {b}");
    }
    let records = read_metrics(&folder.join(run).join(METRICS)).unwrap();
    assert!(
        records
            .iter()
            .filter_map(|r| r.train())
            .all(|m| m.exchange_seconds > 0.0),
        "{run}: every step waited on an exchange"
    );
}

/// Run `name` on two processes of `workers` workers each joined over loopback, both waited
/// for and successful.
fn two_nodes(folder: &Path, name: &str, steps: usize, objective: &str, workers: usize) {
    let parallel = format!(
        "[parallel]\nworkers = {workers}\nnodes = 2\norchestrator = \"127.0.0.1:{}\"\n\
         timeout_seconds = 60",
        free_port()
    );
    let file = write_run(folder, name, steps, objective, &parallel);
    let node0 = spawn(&file, &[]);
    let node1 = spawn(&file, &["--node-rank", "1"]);
    for (rank, node) in [node0, node1].into_iter().enumerate() {
        let out = node.wait_with_output().unwrap();
        assert!(out.status.success(), "node {rank}: {}", stderr(&out));
    }
}

/// One worker, two threads (`--workers 2`), and two processes (`--node-rank`) on loopback.
fn one_two_threads_and_two_processes(objective: &str) {
    let folder = tempfile::tempdir().unwrap();
    let folder = folder.path();
    let steps = 6;
    let one = one_worker(folder, steps, objective);

    let threads = write_run(folder, "threads", steps, objective, "");
    let out = opd(&["train", "--workers", "2"], &threads);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_close_to_one(folder, "threads", &one);

    two_nodes(folder, "nodes", steps, objective, 1);
    assert_close_to_one(folder, "nodes", &one);
}

#[test]
fn grpo_on_two_threads_and_on_two_processes_reaches_the_weights_of_one_worker() {
    one_two_threads_and_two_processes(r#"{ method = "grpo", group_size = 4 }"#);
}

/// Two processes of two workers each: the sum inside each process (burn's collective), across
/// the processes (the star) and back to each process's second worker (burn's broadcast).
#[test]
fn two_processes_of_two_workers_reach_the_weights_of_one_worker() {
    let objective = r#"{ method = "grpo", group_size = 4 }"#;
    let folder = tempfile::tempdir().unwrap();
    let folder = folder.path();
    let one = one_worker(folder, 6, objective);
    two_nodes(folder, "four", 6, objective, 2);
    assert_close_to_one(folder, "four", &one);
}

#[test]
fn sft_on_two_threads_and_on_two_processes_reaches_the_weights_of_one_worker() {
    one_two_threads_and_two_processes(r#"{ method = "sft" }"#);
}

#[test]
fn opsd_on_two_threads_and_on_two_processes_reaches_the_weights_of_one_worker() {
    one_two_threads_and_two_processes(r#"{ method = "opsd" }"#);
}

#[test]
fn a_killed_node_stops_the_other_and_the_run_resumes_on_one_worker() {
    let folder = tempfile::tempdir().unwrap();
    let folder = folder.path();
    let parallel = format!(
        "[parallel]\nnodes = 2\norchestrator = \"127.0.0.1:{}\"\ntimeout_seconds = 5",
        free_port()
    );
    let file = write_run(
        folder,
        "run",
        1000,
        r#"{ method = "grpo", group_size = 4 }"#,
        &parallel,
    );
    let run = folder.join("run");
    let mut node0 = spawn(&file, &[]);
    let mut node1 = spawn(&file, &["--node-rank", "1"]);
    let clock = Instant::now();
    while !run.join("step-000003").is_dir() {
        assert!(clock.elapsed() < Duration::from_secs(120), "no checkpoint");
        assert!(node0.try_wait().unwrap().is_none(), "node 0 stopped early");
        std::thread::sleep(Duration::from_millis(10));
    }
    node1.kill().unwrap();
    node1.wait().unwrap();
    let killed = Instant::now();
    let out = node0.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let error = stderr(&out);
    assert!(!out.status.success(), "node 0 went on alone");
    assert!(
        waited < Duration::from_secs(60),
        "node 0 took {waited:?} to stop"
    );
    assert!(
        error.contains("lost node 1"),
        "the error names the lost node: {error}"
    );

    // The same run, resumed by one worker in one process (`parallel` may change on resume).
    let text = std::fs::read_to_string(&file).unwrap();
    let alone = text[..text.find("[parallel]").unwrap()].replace("steps = 1000", "steps = 9");
    std::fs::write(&file, alone).unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run.join("final/model.safetensors").exists());
}

#[test]
fn a_node_without_the_run_secret_never_joins_and_the_run_says_so() {
    let folder = tempfile::tempdir().unwrap();
    let folder = folder.path();
    let parallel = format!(
        "[parallel]\nnodes = 2\norchestrator = \"127.0.0.1:{}\"\ntimeout_seconds = 3",
        free_port()
    );
    let file = write_run(folder, "run", 4, r#"{ method = "sft" }"#, &parallel);
    let node0 = spawn(&file, &[]);
    let node1 = spawn_with_secret(
        &file,
        &["--node-rank", "1"],
        "another secret of 32 bytes......",
    );
    let (out0, out1) = (
        node0.wait_with_output().unwrap(),
        node1.wait_with_output().unwrap(),
    );
    assert!(!out0.status.success() && !out1.status.success());
    let (e0, e1) = (stderr(&out0), stderr(&out1));
    assert!(
        e0.contains("refused a connection") && e0.contains("node 1"),
        "{e0}"
    );
    assert!(
        e0.contains("never joined") || e0.contains("node(s) 1 died or hangs"),
        "{e0}"
    );
    assert!(
        e1.contains("refused this node") || e1.contains("does not prove"),
        "{e1}"
    );
    // Without any secret a node does not start.
    let mut lone = Command::new(OPD);
    let out = lone
        .env_remove("OPD_NODE_SECRET")
        .args(["train", "--node-rank", "1"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(stderr(&out).contains("OPD_NODE_SECRET"), "{}", stderr(&out));
}
