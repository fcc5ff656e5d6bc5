//! Run files of a tiny model for the tests of `opd train`, and `opd` as a process.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use opd_cli::run::{METRICS, read_metrics};

/// The `opd` binary.
pub const OPD: &str = env!("CARGO_BIN_EXE_opd");

/// The model of every run here: one small block on characters.
pub const TINY_MODEL: &str = r#"[model.scratch]
alphabet = "0123456789+"
layers = 1
hidden_size = 32
intermediate_size = 64
heads = 2
max_positions = 16"#;

/// The text of a small GRPO run on single-digit addition writing to `dir`, with a
/// checkpoint every 3 steps and a constant learning rate (so a run's steps do not depend on
/// `steps`).
pub fn run_text(dir: &Path, steps: usize) -> String {
    format!(
        r#"
{TINY_MODEL}

[data.arithmetic]
max_operand = 9
train_tasks = 80
test_tasks = 20

[output]
dir = "{}"
checkpoint_every = 3
keep_checkpoints = 2
eval_every = 5

[train]
steps = {steps}
prompts_per_step = 4
micro_batch = 16
sampling = {{ max_new_tokens = 3 }}
optimizer = {{ learning_rate = 1e-2, min_lr_ratio = 1.0 }}
objective = {{ method = "grpo", group_size = 4 }}
"#,
        dir.display()
    )
}

/// [`run_text`] written to `folder/name.toml`, writing to `folder/name`.
pub fn run_file(folder: &Path, name: &str, steps: usize) -> PathBuf {
    let path = folder.join(format!("{name}.toml"));
    std::fs::write(&path, run_text(&folder.join(name), steps)).unwrap();
    path
}

/// `opd ARGS…`, waited for.
pub fn opd(args: &[&str], file: &Path) -> Output {
    Command::new(OPD).args(args).arg(file).output().unwrap()
}

/// Its stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each train record's step and loss, in file order.
pub fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    read_metrics(&run.join(METRICS))
        .unwrap()
        .iter()
        .filter_map(|r| r.train())
        .map(|m| (m.step as u64, m.loss))
        .collect()
}
