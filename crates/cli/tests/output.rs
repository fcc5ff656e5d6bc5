//! `opd generate` and its stdout: a reader that goes away is a clean exit, a full disk is a
//! reported error, and a large `--n` runs in bounded batches (one beyond memory is refused); `opd export` refuses a folder
//! that holds files. Never a panic.

use std::process::{Command, Stdio};

#[path = "../../../tests/support/smollm2.rs"]
mod smollm2;
use smollm2::smollm2_path;

fn generate(extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_opd"));
    command
        .args(["generate", "--model"])
        .arg(smollm2_path())
        .args(["--prompt", "Count to three.", "--max-new-tokens", "3"])
        .args(extra)
        .stderr(Stdio::piped());
    command
}

#[test]
fn a_closed_stdout_is_a_clean_exit() {
    let mut child = generate(&["--n", "4", "--temperature", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before any answer is written
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_full_stdout_is_a_reported_error() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
    let Ok(full) = full else {
        eprintln!("no /dev/full here: skipped");
        return;
    };
    let out = generate(&[]).stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error:") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn a_large_n_runs_in_bounded_batches() {
    let out = generate(&["--n", "40", "--max-batch", "8", "--temperature", "1"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("--- sample ").count(), 40, "{stdout}");
}

#[test]
fn a_bad_flag_is_reported_before_the_model_loads() {
    let out = Command::new(env!("CARGO_BIN_EXE_opd"))
        .args([
            "generate",
            "--model",
            "no/such/model.gguf",
            "--prompt",
            "x",
            "--top-p",
            "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("top_p") && !stderr.contains("no/such"),
        "{stderr}"
    );
}

#[test]
fn export_refuses_a_folder_that_holds_files() {
    let out = tempfile::tempdir().unwrap();
    let stale = out.path().join("model-00001-of-00002.safetensors");
    std::fs::write(&stale, b"another model").unwrap();
    let export = |force: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_opd"));
        command.arg("export").arg("--model").arg(smollm2_path());
        command.arg("--out").arg(out.path());
        if force {
            command.arg("--force");
        }
        command.output().unwrap()
    };
    let refused = export(false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!out.path().join("config.json").exists());

    let forced = export(true);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(out.path().join("config.json").exists() && stale.exists());
}

#[test]
fn the_prompt_comes_from_a_file_or_stdin_and_one_prompt_has_no_index() {
    let opd = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_opd"));
        command.args(["generate", "--model"]).arg(smollm2_path());
        command.args(["--max-new-tokens", "2"]);
        command
    };
    let mut child = opd()
        .args(["--prompt-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"Count to three.").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());

    let missing = opd()
        .args(["--prompt-file", "no/such/prompt.txt"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no/such/prompt.txt"), "{stderr}");

    let long = "one two three four ".repeat(3000);
    let too_long = opd().args(["--prompt", &long]).output().unwrap();
    let stderr = String::from_utf8_lossy(&too_long.stderr);
    assert_eq!(too_long.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the prompt has") && stderr.contains("context is 8192 tokens"),
        "{stderr}"
    );
    assert!(!stderr.contains("prompt 0"), "{stderr}");
}

/// One answer streams as it is sampled and ends as the sampler cut it: no part of a stop
/// string is printed, and the text equals the first of several answers printed at the end.
#[test]
fn one_answer_streams_and_never_prints_a_cut_stop_string() {
    let opd = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_opd"))
            .args(["generate", "--chat", "--model"])
            .arg(smollm2_path())
            .args([
                "--prompt",
                "What is the capital of France?",
                "--max-new-tokens",
                "12",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let streamed = opd(&[]);
    assert_eq!(streamed, "The capital of France is Paris.\n");
    let batched = opd(&["--n", "2"]);
    assert!(
        batched.starts_with(&format!("--- sample 0 (stop token 2)\n{streamed}")),
        "{batched}"
    );
    // The sampler cuts at the token that starts the stop string (" Paris").
    assert_eq!(opd(&["--stop", "Paris."]), "The capital of France is\n");
}

#[test]
fn an_n_beyond_memory_is_refused_with_the_limit() {
    let out = generate(&["--n", "4000000000", "--temperature", "1"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("GiB of memory is available: at most --n"),
        "{stderr}"
    );
}
