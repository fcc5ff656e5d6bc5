//! What a run folder guarantees (`docs/run-folder.md`), each class tested on real `opd train`
//! processes: a refused resume writes nothing; one writer per folder; a torn metrics line is
//! dropped; random SIGKILLs, during steps, metrics writes and checkpoints, end with the steps
//! of an unbroken run; a damaged checkpoint file is named; SIGTERM stops after a step with a
//! checkpoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opd_cli::folder::LOCK;
use opd_cli::run::{METRICS, read_metrics};

#[path = "support/runs.rs"]
mod runs;
use runs::{OPD, opd, run_file, run_text, stderr, train_losses};

/// Every file under `dir` but the lock, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap() != LOCK {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// A finished run of `steps` steps in `folder/name`; returns its run file.
fn finished(folder: &Path, name: &str, steps: usize) -> PathBuf {
    let file = run_file(folder, name, steps);
    let out = opd(&["train"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    file
}

fn spawn_train(file: &Path, resume: bool) -> Child {
    let mut command = Command::new(OPD);
    command.arg("train");
    if resume {
        command.arg("--resume");
    }
    command
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let clock = Instant::now();
    while !ready() {
        assert!(clock.elapsed() < Duration::from_secs(120), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn train_lines(run: &Path) -> usize {
    std::fs::read_to_string(run.join(METRICS))
        .map(|t| t.matches("\"kind\":\"train\"").count())
        .unwrap_or(0)
}

#[test]
fn a_refused_resume_changes_nothing() {
    let folder = tempfile::tempdir().unwrap();
    let file = finished(folder.path(), "run", 6);
    let run = folder.path().join("run");
    let before = snapshot(&run);
    let text = std::fs::read_to_string(&file).unwrap();
    let cases = [
        (text.clone(), "finished at step 6"),
        (
            text.replace("steps = 6", "steps = 9")
                .replace("learning_rate = 1e-2", "learning_rate = 2e-2"),
            "train.optimizer.learning_rate",
        ),
        (
            text.replace("steps = 6", "steps = 9")
                .replace("max_operand = 9", "max_operand = 8"),
            "data.arithmetic.max_operand",
        ),
        (
            text.replace("steps = 6", "steps = 9")
                .replace("layers = 1", "layers = 2"),
            "model.scratch.layers",
        ),
        (
            text.replace("steps = 6", "steps = 9")
                .replace("[train]", "[environment]\nkind = \"exact\"\n\n[train]"),
            "environment",
        ),
        (
            text.replace("steps = 6", "steps = 9")
                .replace("eval_every = 5", "eval_every = 4"),
            "output.eval_every",
        ),
    ];
    for (i, (changed, expected)) in cases.iter().enumerate() {
        std::fs::write(&file, changed).unwrap();
        let out = opd(&["train", "--resume"], &file);
        let err = stderr(&out);
        assert!(!out.status.success(), "case {i} resumed: {err}");
        assert!(err.contains(expected), "case {i}: {err}");
        assert_eq!(snapshot(&run), before, "case {i} changed the folder");
    }
    // Only what RESUMABLE allows: more steps and other checkpoint settings.
    let allowed = text
        .replace("steps = 6", "steps = 8")
        .replace("checkpoint_every = 3", "checkpoint_every = 4")
        .replace("keep_checkpoints = 2", "keep_checkpoints = 3");
    std::fs::write(&file, allowed).unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("train.steps changed from 6 to 8"),
        "{}",
        stderr(&out)
    );
    assert_eq!(train_losses(&run).len(), 8);
}

#[test]
fn resume_without_a_checkpoint_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    let file = run_file(folder.path(), "run", 6);
    let run = folder.path().join("run");
    let out = opd(&["train", "--resume"], &file);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no such run folder"),
        "{}",
        stderr(&out)
    );
    assert!(!run.exists(), "a refused resume created the folder");

    // A run killed before its first checkpoint: its metrics stay as they are.
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join(METRICS), "{\"kind\":\"eval\",\"step\":0}\n").unwrap();
    let before = snapshot(&run);
    let out = opd(&["train", "--resume"], &file);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("no checkpoint to resume from") && err.contains(&run.display().to_string()),
        "{err}"
    );
    assert_eq!(snapshot(&run), before);
    // A fresh run refuses it too, and a folder of other files.
    let out = opd(&["train"], &file);
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    std::fs::remove_file(run.join(METRICS)).unwrap();
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    let out = opd(&["train"], &file);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("notes.txt"), "{}", stderr(&out));
    assert_eq!(std::fs::read(run.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn one_writer_per_run_folder() {
    let folder = tempfile::tempdir().unwrap();
    let file = run_file(folder.path(), "run", 1_000_000);
    let run = folder.path().join("run");
    let mut first = spawn_train(&file, false);
    wait_for("no checkpoint", || run.join("step-000006").exists());
    let pid = first.id().to_string();
    for resume in [false, true] {
        let args: &[&str] = if resume {
            &["train", "--resume"]
        } else {
            &["train"]
        };
        let out = opd(args, &file);
        let err = stderr(&out);
        assert!(!out.status.success(), "a second writer ran: {err}");
        assert!(err.contains(&format!("process {pid}")), "{err}");
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // The kill released the lock: the run resumes, and each step is in the metrics once.
    let done = opd_trainers::checkpoint::checkpoints(&run)
        .last()
        .unwrap()
        .0;
    std::fs::write(&file, run_text(&run, done + 2)).unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let steps: Vec<u64> = train_losses(&run).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (0..(done + 2) as u64).collect::<Vec<_>>());
}

#[test]
fn a_torn_metrics_line_is_skipped_by_readers_and_dropped_on_resume() {
    let folder = tempfile::tempdir().unwrap();
    let expected = train_losses(&finished(folder.path(), "unbroken", 9).with_extension(""));
    let file = finished(folder.path(), "torn", 6);
    let run = folder.path().join("torn");
    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join(METRICS))
        .unwrap();
    metrics.write_all(b"{\"kind\":\"train\",\"st").unwrap();
    drop(metrics);
    assert_eq!(read_metrics(&run.join(METRICS)).unwrap().len(), 6 + 3);
    let compare = Command::new(OPD)
        .arg("compare")
        .arg(&run)
        .arg("--out")
        .arg(folder.path().join("compare"))
        .output()
        .unwrap();
    assert!(compare.status.success(), "{}", stderr(&compare));
    assert!(stderr(&compare).contains("torn"), "{}", stderr(&compare));

    std::fs::write(&file, run_text(&run, 9)).unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dropped a torn last line"),
        "{}",
        stderr(&out)
    );
    assert_eq!(train_losses(&run), expected);
    let text = std::fs::read_to_string(run.join(METRICS)).unwrap();
    assert!(text.ends_with('\n') && !text.contains("\"st{"), "{text}");
}

/// A small deterministic generator of kill delays.
fn delays(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed;
    std::iter::repeat_with(move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % 250
    })
}

#[test]
fn runs_killed_at_random_moments_end_with_the_steps_of_an_unbroken_one() {
    let folder = tempfile::tempdir().unwrap();
    let steps = 300;
    let expected = train_losses(&finished(folder.path(), "unbroken", steps).with_extension(""));
    let file = run_file(folder.path(), "killed", steps);
    let run = folder.path().join("killed");
    let (mut kills, mut restarts) = (0, 0);
    let mut delay = delays(7);
    loop {
        if run.join("final").is_dir() {
            // The last kill landed after the run was whole, while its process was exiting:
            // a resume would rightly refuse a finished run.
            break;
        }
        let resume = !opd_trainers::checkpoint::checkpoints(&run).is_empty();
        if !resume && run.exists() {
            // Killed before its first checkpoint: nothing to resume, start over.
            std::fs::remove_dir_all(&run).unwrap();
            restarts += 1;
        }
        let mut child = spawn_train(&file, resume);
        std::thread::sleep(Duration::from_millis(delay.next().unwrap()));
        if child.try_wait().unwrap().is_none() && kills < 40 {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            continue;
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        break;
    }
    assert!(kills >= 5, "only {kills} kills landed: nothing was tested");
    eprintln!("{kills} kills, {restarts} restarts from scratch");
    assert_eq!(train_losses(&run), expected);
    let text = std::fs::read_to_string(run.join(METRICS)).unwrap();
    assert!(text.ends_with('\n'));
    assert!(run.join("final/model.safetensors").exists());
    assert!(
        !std::fs::read_dir(&run).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "a partial file is left"
    );
}

#[test]
fn a_damaged_checkpoint_file_is_named_and_the_previous_checkpoint_offered() {
    let folder = tempfile::tempdir().unwrap();
    let expected = train_losses(&finished(folder.path(), "unbroken", 9).with_extension(""));
    let file = finished(folder.path(), "run", 6);
    let run = folder.path().join("run");
    std::fs::write(&file, run_text(&run, 9)).unwrap();
    let newest = run.join("step-000006");
    let optimizer = newest.join("optimizer.bin");
    let bytes = std::fs::read(&optimizer).unwrap();
    let trainable = newest.join("trainable.safetensors");
    let weights = std::fs::read(&trainable).unwrap();
    let mut garbage = weights.clone();
    let middle = garbage.len() / 2;
    garbage[middle] ^= 0x40;
    let damages: [(&Path, Vec<u8>, &str); 3] = [
        (&optimizer, bytes[..bytes.len() / 2].to_vec(), "bytes"),
        (&optimizer, vec![7u8; bytes.len()], "CRC-32"),
        (&trainable, garbage, "CRC-32"),
    ];
    for (i, (path, damaged, what)) in damages.iter().enumerate() {
        std::fs::write(path, damaged).unwrap();
        let out = opd(&["train", "--resume"], &file);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(what),
            "case {i}: {err}"
        );
        assert!(err.contains("step-000003 is intact"), "case {i}: {err}");
        std::fs::write(&optimizer, &bytes).unwrap();
        std::fs::write(&trainable, &weights).unwrap();
    }
    std::fs::write(newest.join("state.json"), "{\"steps_do").unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(stderr(&out).contains("state.json"), "{}", stderr(&out));
    // As offered: without the damaged checkpoint the run resumes from the previous one.
    std::fs::remove_dir_all(&newest).unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(train_losses(&run), expected);
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_stops_after_the_step_with_a_checkpoint() {
    let folder = tempfile::tempdir().unwrap();
    let file = run_file(folder.path(), "run", 1_000_000);
    let run = folder.path().join("run");
    let mut child = spawn_train(&file, false);
    wait_for("no steps", || train_lines(&run) >= 4);
    signal(&child, "TERM");
    let clock = Instant::now();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{err}");
    assert!(clock.elapsed() < Duration::from_secs(30));
    assert!(
        err.contains("stopped by SIGTERM") && err.contains("--resume"),
        "{err}"
    );
    let done = train_lines(&run);
    assert!(
        run.join(format!("step-{done:06}")).is_dir(),
        "no checkpoint at step {done}: {err}"
    );

    // Resumed, it takes the steps an unbroken run takes.
    let expected = train_losses(&finished(folder.path(), "unbroken", done + 3).with_extension(""));
    std::fs::write(&file, run_text(&run, done + 3)).unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(train_losses(&run), expected);
}

#[test]
fn a_second_sigint_stops_at_once() {
    let folder = tempfile::tempdir().unwrap();
    // Steps of seconds: a wider model and longer answers.
    let text = run_text(&folder.path().join("run"), 1_000_000)
        .replace("hidden_size = 32", "hidden_size = 256")
        .replace("intermediate_size = 64", "intermediate_size = 1024")
        .replace("layers = 1", "layers = 6")
        .replace("max_positions = 16", "max_positions = 256")
        .replace("max_new_tokens = 3", "max_new_tokens = 200")
        .replace("prompts_per_step = 4", "prompts_per_step = 32");
    let file = folder.path().join("run.toml");
    std::fs::write(&file, text).unwrap();
    let run = folder.path().join("run");
    let mut child = spawn_train(&file, false);
    // stderr read as it comes, so the second signal follows the run's answer to the first.
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = (
        std::sync::Arc::new(std::sync::Mutex::new(String::new())),
        std::sync::mpsc::channel::<()>(),
    );
    let (sink, tell) = (std::sync::Arc::clone(&lines), seen.0);
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let heard = line.contains("send the signal again");
            sink.lock().unwrap().push_str(&(line + "\n"));
            if heard {
                let _ = tell.send(());
            }
        }
    });
    wait_for("no step", || train_lines(&run) >= 1);
    signal(&child, "INT");
    seen.1
        .recv_timeout(Duration::from_secs(30))
        .expect("the first signal was heard");
    signal(&child, "INT");
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let err = lines.lock().unwrap().clone();
    assert_eq!(status.code(), Some(128 + 2), "{err}");
    assert!(
        !err.contains("stopped by SIGINT"),
        "the step finished first: {err}"
    );
}

#[test]
fn what_a_kill_mid_write_leaves_is_ignored_and_cleaned() {
    let folder = tempfile::tempdir().unwrap();
    let expected = train_losses(&finished(folder.path(), "unbroken", 9).with_extension(""));
    let file = finished(folder.path(), "run", 6);
    let run = folder.path().join("run");
    // A kill inside a checkpoint write, a metrics cut-back, a config write and a final save.
    let partial = run.join("step-000009.tmp");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("trainable.safetensors"), b"half a fi").unwrap();
    std::fs::write(run.join("metrics.jsonl.tmp"), b"{\"kind\":\"tr").unwrap();
    std::fs::write(run.join("config.toml.tmp"), b"[model").unwrap();
    std::fs::create_dir(run.join("final.tmp")).unwrap();
    std::fs::write(file.as_path(), run_text(&run, 9)).unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(train_losses(&run), expected);
    let left: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_run_killed_before_its_final_model_was_whole_resumes_to_write_it() {
    let folder = tempfile::tempdir().unwrap();
    let file = finished(folder.path(), "run", 6);
    let run = folder.path().join("run");
    let losses = train_losses(&run);
    std::fs::remove_dir_all(run.join("final")).unwrap();
    let out = opd(&["train", "--resume"], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run.join("final/model.safetensors").exists());
    assert_eq!(train_losses(&run), losses, "no step was taken again");
}
