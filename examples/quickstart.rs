//! # Quickstart: on-policy distillation against SFT and GRPO, from scratch, on a CPU
//!
//! `cargo run --release --example quickstart` (a few minutes on 2 cores) writes
//! `runs/quickstart/` and prints a table of held-out accuracy against generated tokens.
//!
//! 1. **Teacher**: a 2-layer character model learns `a+b` (operands 0–49) by SFT from
//!    scratch.
//! 2. **Student**: the same architecture from another seed, warmed up by a short SFT: it has
//!    the answer format and a little accuracy, not the skill.
//! 3. **Four students, one budget of generated tokens** (sampling is the cost that matters
//!    in post-training):
//!    - **OPD**: the student samples answers, the teacher scores every token, the student
//!      moves toward the teacher: full-vocabulary reverse KL (mode-seeking, the usual OPD
//!      loss) and forward KL (GKD's β = 0) as two runs;
//!    - **SFT on teacher samples**: the teacher samples answers (its tokens are the budget),
//!      the student imitates them;
//!    - **GRPO**: the student samples 8 answers per question, 0/1 reward, group advantages.
//! 4. The table and `runs/quickstart/compare.png` (and `.svg`) show the ranking, whatever it is.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use opd_cli::RunConfig;
use opd_cli::plot::plot_runs;
use opd_cli::run::{METRICS, RunReport, read_metrics, train};
use opd_cli::setup::tasks;
use opd_rollout::{SamplingParams, generate};
use opd_tasks::data::write_jsonl;
use opd_tasks::{Task, prompt_ids};

type Backend = Autodiff<Flex>;

/// Tokens each of the three students may generate (for SFT: the teacher's samples).
const BUDGET: u64 = 60_000;

/// What every run shares: the task, the model's shape, where to write.
fn run_config(name: &str, model: &str, data: &str, train: &str, extra: &str) -> RunConfig {
    let text = format!(
        r#"
{model}
{extra}

{data}

[environment]
kind = "math"

[output]
dir = "runs/quickstart/{name}"
checkpoint_every = 0
keep_checkpoints = 1
eval_every = 25

[train]
{train}
micro_batch = 64
sampling = {{ max_new_tokens = 4 }}
"#
    );
    RunConfig::parse(&text, Path::new(&format!("quickstart:{name}"))).expect("a valid run file")
}

const SCRATCH: &str = "[model.scratch]\nalphabet = \"0123456789+-*\"\nlayers = 2\nhidden_size = 64\nintermediate_size = 256\nheads = 4";
const ARITHMETIC: &str = "[data.arithmetic]\nmax_operand = 49\noperations = [\"add\"]\ntrain_tasks = 2000\ntest_tasks = 200";

fn trained(config: &RunConfig) -> RunReport {
    let clock = Instant::now();
    let report = train::<Backend>(config, false, &Default::default()).expect("the run trains");
    let accuracy = report.evaluation.map_or(f64::NAN, |e| e.accuracy);
    println!(
        "  {:<28} {:>5} steps {:>8} generated tokens  held-out accuracy {accuracy:.3}  ({:.0} s)",
        report.dir.display(),
        report.steps,
        report.generated_tokens,
        clock.elapsed().as_secs_f64()
    );
    report
}

/// The teacher samples answers (temperature 1) to the training questions, pass after pass,
/// until its answers hold `budget` tokens; they become SFT references.
fn teacher_samples(teacher: &Path, train_tasks: &[Task], budget: u64, out: &Path) -> PathBuf {
    let (model, tokenizer) =
        opd_policy::load::<Flex>(teacher, &Default::default()).expect("the teacher loads");
    let prompts: Vec<Vec<u32>> = train_tasks
        .iter()
        .map(|t| prompt_ids(&tokenizer, &t.prompt).expect("a prompt"))
        .collect();
    let (mut samples, mut tokens) = (Vec::new(), 0u64);
    for pass in 0.. {
        let params = SamplingParams {
            max_new_tokens: 4,
            seed: 1000 + pass,
            ..SamplingParams::default()
        };
        let batch = generate(&model, &tokenizer, &prompts, &params).expect("teacher samples");
        for sample in batch.samples {
            if tokens >= budget {
                let path = out.join("teacher-samples.jsonl");
                write_jsonl(&path, &samples).expect("samples written");
                return path;
            }
            tokens += sample.response_ids.len() as u64;
            let task = &train_tasks[sample.prompt_index];
            samples.push(Task {
                prompt: task.prompt.clone(),
                reference: Some(sample.text),
                answer: task.answer.clone(),
                tests: None,
                teacher: None,
            });
        }
    }
    unreachable!("the loop returns once the budget is spent")
}

/// `(generated tokens, accuracy)` of each evaluation in a run folder (for SFT on teacher
/// samples the tokens are the teacher's, of the samples trained on so far).
fn accuracy_curve(dir: &Path) -> Vec<(u64, f64)> {
    read_metrics(&dir.join(METRICS))
        .expect("metrics")
        .iter()
        .filter_map(|r| r.eval())
        .map(|e| (e.generated_tokens_total, e.accuracy))
        .collect()
}

fn main() {
    opd_policy::allocator::tune();
    let root = Path::new("runs/quickstart");
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).expect("runs/quickstart");
    let clock = Instant::now();

    println!("1. teacher: SFT from scratch on a+b");
    let teacher = trained(&run_config(
        "teacher",
        &format!("{SCRATCH}\nseed = 0"),
        ARITHMETIC,
        "steps = 2000\nprompts_per_step = 64\noptimizer = { learning_rate = 3e-3, warmup_steps = 20 }\nobjective = { method = \"sft\" }",
        "",
    ));
    let teacher_final = teacher.dir.join("final");

    println!("2. student: a short SFT warm start from another seed");
    let student = trained(&run_config(
        "student",
        &format!("{SCRATCH}\nseed = 1"),
        ARITHMETIC,
        "steps = 300\nprompts_per_step = 64\noptimizer = { learning_rate = 3e-3, warmup_steps = 20, min_lr_ratio = 1.0 }\nobjective = { method = \"sft\" }",
        "",
    ));
    let start = format!(
        "[model]\npath = \"{}\"",
        student.dir.join("final").display()
    );

    println!("3. four students, {BUDGET} generated tokens each");
    let budget = format!("[budget]\ngenerated_tokens = {BUDGET}");
    // Each method at the better of the two learning rates tried (1e-3, 3e-3).
    let opd = |name: &str, beta: f64, learning_rate: f64| {
        trained(&run_config(
            name,
            &start,
            ARITHMETIC,
            &format!(
                "steps = 10000\nprompts_per_step = 64\noptimizer = {{ learning_rate = {learning_rate}, min_lr_ratio = 1.0 }}\nobjective = {{ method = \"opd\", form = \"divergence\", divergence_beta = {beta:.1} }}"
            ),
            &format!(
                "[teacher]\npath = \"{}\"\n\n{budget}",
                teacher_final.display()
            ),
        ))
    };
    let opd_reverse = opd("opd-reverse-kl", 1.0, 1e-3);
    let opd_forward = opd("opd-forward-kl", 0.0, 3e-3);
    // The arithmetic split every run reads, as files for the run that trains on samples.
    let arithmetic = run_config("split", SCRATCH, ARITHMETIC, "", "");
    let (train_tasks, test_tasks) = tasks(&arithmetic.data).expect("arithmetic tasks");
    let test_file = root.join("test.jsonl");
    write_jsonl(&test_file, &test_tasks).expect("test written");
    let samples = teacher_samples(&teacher_final, &train_tasks, BUDGET, root);
    let sft = trained(&run_config(
        "sft-on-teacher-samples",
        &start,
        &format!(
            "[data]\ntrain = \"{}\"\ntest = \"{}\"",
            samples.display(),
            test_file.display()
        ),
        "steps = 10000\nprompts_per_step = 64\noptimizer = { learning_rate = 3e-3, min_lr_ratio = 1.0 }\nobjective = { method = \"sft\" }",
        &budget,
    ));
    let grpo = trained(&run_config(
        "grpo",
        &start,
        ARITHMETIC,
        "steps = 10000\nprompts_per_step = 8\noptimizer = { learning_rate = 1e-3, min_lr_ratio = 1.0 }\nobjective = { method = \"grpo\", group_size = 8 }",
        &budget,
    ));

    println!("\nheld-out accuracy (greedy, 200 questions) against generated tokens:");
    let runs = [
        ("OPD, reverse KL", &opd_reverse),
        ("OPD, forward KL", &opd_forward),
        ("SFT on teacher samples", &sft),
        ("GRPO", &grpo),
    ];
    let curves: Vec<(&str, Vec<(u64, f64)>)> = runs
        .iter()
        .map(|(name, run)| (*name, accuracy_curve(&run.dir)))
        .collect();
    print_table(&curves);
    let teacher_accuracy = teacher.evaluation.map_or(f64::NAN, |e| e.accuracy);
    println!(
        "(teacher {teacher_accuracy:.3}; student before {:.3})",
        student.evaluation.map_or(f64::NAN, |e| e.accuracy)
    );

    let named: Vec<(&str, &Path)> = runs.iter().map(|(n, r)| (*n, r.dir.as_path())).collect();
    plot_runs(&named, &root.join("compare")).expect("the plot");
    println!(
        "\nwrote runs/quickstart/compare.png and .svg in {:.0} s",
        clock.elapsed().as_secs_f64()
    );
}

/// Accuracy of each method at a quarter, half and three quarters of the budget (the last
/// evaluation at or before each mark), and at the end of its run.
fn print_table(curves: &[(&str, Vec<(u64, f64)>)]) {
    let marks = [BUDGET / 4, BUDGET / 2, 3 * BUDGET / 4];
    print!("{:<24}", "generated tokens");
    for mark in marks {
        print!("{mark:>10}");
    }
    println!("{:>10}", "end");
    let cell = |a: Option<f64>| a.map_or("-".into(), |a| format!("{a:.3}"));
    for (name, curve) in curves {
        print!("{name:<24}");
        for mark in marks {
            let at = curve
                .iter()
                .rev()
                .find(|(t, _)| *t <= mark)
                .map(|(_, a)| *a);
            print!("{:>10}", cell(at));
        }
        println!("{:>10}", cell(curve.last().map(|(_, a)| *a)));
    }
}
