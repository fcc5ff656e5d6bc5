//! `opd train` as a user runs it: a run killed with SIGKILL mid-run and resumed takes the same
//! steps as an unbroken one; bad run files are refused with the key and the file.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/runs.rs"]
mod runs;
use runs::{OPD, TINY_MODEL, run_file, train_losses};

#[test]
fn a_killed_run_resumes_with_the_losses_of_an_unbroken_one() {
    let folder = tempfile::tempdir().unwrap();
    let steps = 150;
    let unbroken = run_file(folder.path(), "unbroken", steps);
    let status = Command::new(OPD)
        .arg("train")
        .arg(&unbroken)
        .status()
        .unwrap();
    assert!(status.success());
    let expected = train_losses(&folder.path().join("unbroken"));
    assert_eq!(expected.len(), steps);

    let killed = run_file(folder.path(), "killed", steps);
    let mut child = Command::new(OPD)
        .arg("train")
        .arg(&killed)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = folder.path().join("killed");
    let clock = Instant::now();
    while !run.join("step-000006").exists() {
        assert!(clock.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !run.join("final").exists(),
        "the run finished before it was killed: nothing was tested"
    );

    // A fresh start on the folder is refused; --resume continues.
    let refused = Command::new(OPD)
        .arg("train")
        .arg(&killed)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let status = Command::new(OPD)
        .args(["train", "--resume"])
        .arg(&killed)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(train_losses(&run), expected);
    assert!(run.join("final/model.safetensors").exists());
    assert!(run.join("curves.png").exists() && run.join("curves.svg").exists());
}

#[test]
fn bad_run_files_name_the_key_and_the_file() {
    let folder = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(run_file(folder.path(), "x", 2)).unwrap();
    let cases = [
        (good.replace("steps = 2", "stesp = 2"), "stesp"),
        (
            good.replace("group_size = 4", "group_size = 0"),
            "group_size",
        ),
        (
            good.replace(
                "[data.arithmetic]",
                "[teacher]\npath = \"t.gguf\"\n\n[data.arithmetic]",
            ),
            "teacher",
        ),
        (
            good.replace("max_operand = 9", "max_operand = 9\nmax_operands = 3"),
            "max_operands",
        ),
        (
            good.replace("hidden_size = 32", "hidden_size = 33"),
            "scratch",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = folder.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(OPD).arg("train").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} ran");
        assert!(stderr.contains(key), "case {i}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "case {i}: {stderr}"
        );
    }
}

/// A LoRA run ends with its merged model saved: the path every SmolLM2 run file takes
/// (adapters trained under autodiff, merged, written), here with its frozen bases in bf16.
#[test]
fn a_lora_run_saves_its_merged_model() {
    let folder = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[model]
lora = {{ rank = 2, alpha = 4.0, targets = ["q_proj", "v_proj", "up_proj"] }}
frozen_precision = "bf16"

{TINY_MODEL}

[data.arithmetic]
max_operand = 9
train_tasks = 40
test_tasks = 8

[output]
dir = "{}"

[train]
steps = 2
prompts_per_step = 4
sampling = {{ max_new_tokens = 3 }}
optimizer = {{ learning_rate = 1e-2 }}
objective = {{ method = "grpo", group_size = 2 }}
"#,
        folder.path().join("lora").display()
    );
    let path = folder.path().join("lora.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(OPD).arg("train").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let final_dir = folder.path().join("lora/final");
    assert!(final_dir.join("model.safetensors").exists());
    let loaded = opd_policy::load::<burn::backend::Flex>(&final_dir, &Default::default());
    let (model, _) = loaded.unwrap();
    let q = &model.layers[0].self_attn.q_proj;
    assert!(q.lora.is_none());
    assert_eq!(q.base.weight.val().dtype(), burn::tensor::DType::F32);
}
