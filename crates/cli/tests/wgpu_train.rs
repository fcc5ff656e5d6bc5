//! `opd train --backend wgpu` end to end: a tiny SFT run, then OPD (sampling, teacher scoring,
//! the divergence) from its model, each trained on flex and on wgpu; every step's loss agrees
//! within 1e-4 · max(1, |loss|) (measured: 4e-7). The weights are drawn on the host and sampling draws its
//! numbers on the host, so the two backends differ only by float rounding. Run with
//! `cargo test -p opd-cli --features wgpu --test wgpu_train` (CI: lavapipe).
#![cfg(feature = "wgpu")]

use std::path::Path;

#[path = "support/runs.rs"]
mod runs;
use runs::{OPD, TINY_MODEL, stderr, train_losses};

/// A run of `objective` on single-digit addition writing to `dir`, with `extra` sections.
fn run_text(dir: &Path, objective: &str, extra: &str) -> String {
    format!(
        r#"
{TINY_MODEL}
{extra}
[data.arithmetic]
max_operand = 9
train_tasks = 60
test_tasks = 20

[output]
dir = "{}"
eval_every = 4

[train]
steps = 6
prompts_per_step = 8
micro_batch = 4
sampling = {{ max_new_tokens = 3 }}
optimizer = {{ learning_rate = 1e-2, warmup_steps = 1 }}
objective = {objective}
"#,
        dir.display()
    )
}

/// Trains `text` on `backend` in `folder/name`; returns that run's folder.
fn train(folder: &Path, name: &str, backend: &str, text: &str) -> std::path::PathBuf {
    let file = folder.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(OPD)
        .args(["train", "--backend", backend])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} on {backend}: {}",
        stderr(&out)
    );
    folder.join(name)
}

fn assert_same_losses(what: &str, flex: &Path, wgpu: &Path) {
    let (flex, wgpu) = (train_losses(flex), train_losses(wgpu));
    assert_eq!(flex.len(), 6, "{what}: six steps on flex");
    assert_eq!(flex.len(), wgpu.len(), "{what}: as many steps on wgpu");
    let worst = flex
        .iter()
        .zip(&wgpu)
        .map(|((_, a), (_, b))| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{what}: losses {flex:?} on flex, largest difference on wgpu {worst:.2e}");
    for ((step, a), (_, b)) in flex.iter().zip(&wgpu) {
        assert!(
            a.is_finite() && b.is_finite(),
            "{what} step {step}: {a} {b}"
        );
        let tolerance = 1e-4 * a.abs().max(1.0);
        assert!(
            (a - b).abs() <= tolerance,
            "{what} step {step}: flex {a}, wgpu {b}"
        );
    }
}

#[test]
fn sft_then_opd_train_on_wgpu_with_the_losses_of_flex() {
    let folder = tempfile::tempdir().unwrap();
    let f = folder.path();
    let sft = r#"{ method = "sft" }"#;
    let sft_flex = train(
        f,
        "sft-flex",
        "flex",
        &run_text(&f.join("sft-flex"), sft, ""),
    );
    let sft_wgpu = train(
        f,
        "sft-wgpu",
        "wgpu",
        &run_text(&f.join("sft-wgpu"), sft, ""),
    );
    assert_same_losses("SFT", &sft_flex, &sft_wgpu);

    // OPD with reverse KL from the SFT model (trained on flex), into a student of another seed.
    let teacher = format!(
        "[teacher]\npath = \"{}\"\n",
        sft_flex.join("final").display()
    );
    let student = TINY_MODEL.to_string() + "\nseed = 1";
    let opd = r#"{ method = "opd", form = "divergence", divergence = "reverse_kl" }"#;
    let text = |dir: &Path| run_text(dir, opd, &teacher).replacen(TINY_MODEL, &student, 1);
    let opd_flex = train(f, "opd-flex", "flex", &text(&f.join("opd-flex")));
    let opd_wgpu = train(f, "opd-wgpu", "wgpu", &text(&f.join("opd-wgpu")));
    assert_same_losses("OPD", &opd_flex, &opd_wgpu);
}
