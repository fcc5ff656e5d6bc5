//! Values that would damage files or training are refused before a step runs, naming the key,
//! or the task's file and line; a run whose updates are nearly all skipped fails; `opd eval`
//! refuses tasks it cannot grade instead of scoring them 0.

use std::path::Path;
use std::process::Command;

#[path = "support/runs.rs"]
mod runs;
use runs::{OPD, opd, run_file, run_text, stderr};

/// `text` written to `folder/NAME.toml`, then `opd train` on it: its stderr and success.
fn train_text(folder: &Path, name: &str, text: &str) -> (bool, String) {
    let file = folder.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = opd(&["train"], &file);
    (out.status.success(), stderr(&out))
}

#[test]
fn settings_that_damage_files_or_training_name_their_key() {
    let folder = tempfile::tempdir().unwrap();
    let good = run_text(&folder.path().join("run"), 2);
    let dir_line = format!("dir = \"{}\"", folder.path().join("run").display());
    let cases = [
        (good.replace(&dir_line, "dir = \"\""), "output.dir"),
        (good.replace(&dir_line, "dir = \".\""), "output.dir"),
        (good.replace(&dir_line, "dir = \"./\""), "output.dir"),
        (
            good.replace("group_size = 4", "group_size = 0"),
            "objective.group_size",
        ),
        (
            good.replace("group_size = 4", "group_size = 100000"),
            "objective.group_size",
        ),
        (
            good.replace(
                "sampling = { max_new_tokens = 3 }",
                "sampling = { max_new_tokens = 3, stop_strings = [\"\"] }",
            ),
            "sampling.stop_strings",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let (ok, err) = train_text(folder.path(), &format!("bad{i}"), text);
        assert!(!ok, "case {i} ran");
        assert!(err.contains(key), "case {i}: {err}");
        assert!(
            !err.contains("mini_batches"),
            "case {i} blames another key: {err}"
        );
    }
    assert!(!folder.path().join("config.toml").exists());
}

/// A run on the JSONL tasks `rows` (training and held-out).
fn jsonl_run(folder: &Path, name: &str, rows: &str) -> (bool, String) {
    let data = folder.join(format!("{name}.jsonl"));
    std::fs::write(&data, rows).unwrap();
    let text = run_text(&folder.join(name), 2).replace(
        "[data.arithmetic]\nmax_operand = 9\ntrain_tasks = 80\ntest_tasks = 20",
        &format!("[data]\ntrain = \"{0}\"\ntest = \"{0}\"", data.display()),
    );
    train_text(folder, name, &text)
}

#[test]
fn every_task_is_checked_when_the_data_loads() {
    let folder = tempfile::tempdir().unwrap();
    let good = "{\"prompt\": \"1+2\", \"answer\": \"3\"}\n";
    let (ok, err) = jsonl_run(folder.path(), "good", &good.repeat(4));
    assert!(ok, "{err}");
    let cases = [
        (
            format!("{good}\n{{\"prompt\": \"1+a\", \"answer\": \"3\"}}\n"),
            ":3: the prompt has 'a'",
        ),
        (
            format!(
                "{good}{{\"prompt\": \"{}\", \"answer\": \"3\"}}\n",
                "1+".repeat(10)
            ),
            ":2: the prompt is 21 tokens",
        ),
        (
            format!("{good}{{\"prompt\": \"1+2\", \"reference\": \"3\"}}\n"),
            ":2: no `answer`",
        ),
        (
            format!("{{\"prompt\": \"1+2\", \"answer\": \"three\"}}\n{good}"),
            ":1: the `answer` \"three\" holds no number",
        ),
    ];
    for (i, (rows, expected)) in cases.iter().enumerate() {
        let (ok, err) = jsonl_run(folder.path(), &format!("bad{i}"), rows);
        assert!(!ok, "case {i} ran");
        assert!(
            err.contains(&format!("bad{i}.jsonl{expected}")),
            "case {i}: {err}"
        );
    }
}

#[test]
fn a_run_whose_updates_are_all_skipped_stops_and_fails() {
    let folder = tempfile::tempdir().unwrap();
    let text = run_text(&folder.path().join("run"), 50)
        .replace("learning_rate = 1e-2", "learning_rate = 1e30")
        .replace(
            "objective = { method = \"grpo\", group_size = 4 }",
            "objective = { method = \"sft\" }",
        );
    let (ok, err) = train_text(folder.path(), "run", &text);
    assert!(!ok, "{err}");
    assert!(
        err.contains("5 steps in a row") && err.contains("skipped as non-finite"),
        "{err}"
    );
}

#[test]
fn eval_refuses_what_it_cannot_grade_and_takes_data_with_a_run_file() {
    let folder = tempfile::tempdir().unwrap();
    let file = run_file(folder.path(), "run", 2);
    let out = opd(&["train"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let model = folder.path().join("run/final");
    let eval = |args: &[&str]| {
        let out = Command::new(OPD).arg("eval").args(args).output().unwrap();
        (out.status.success(), stderr(&out), out.stdout)
    };
    let data = folder.path().join("tasks.jsonl");
    std::fs::write(&data, "{\"prompt\": \"1+2\", \"reference\": \"3\"}\n").unwrap();
    let (data_arg, model_arg) = (data.display().to_string(), model.display().to_string());
    let (ok, err, _) = eval(&["--data", &data_arg, "--model", &model_arg]);
    assert!(!ok);
    assert!(err.contains("tasks.jsonl:1: no `answer`"), "{err}");
    let (ok, err, _) = eval(&["--config", &file.display().to_string(), "--limit", "0"]);
    assert!(!ok);
    assert!(err.contains("--limit"), "{err}");
    std::fs::write(&data, "{\"prompt\": \"1+2\", \"answer\": \"3\"}\n").unwrap();
    let (ok, err, stdout) = eval(&["--config", &file.display().to_string(), "--data", &data_arg]);
    assert!(ok, "{err}");
    assert!(
        String::from_utf8_lossy(&stdout).contains("1 tasks"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}
