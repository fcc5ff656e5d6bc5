//! # Quickstart: on-policy distillation against SFT and GRPO, from scratch, on a CPU
//!
//! `cargo run --release --example quickstart` (about three minutes on 2 cores) writes
//! `runs/quickstart/` and prints a table of held-out accuracy against generated tokens, the
//! mean ± sd over three seeds of each arm.
//!
//! 1. **Teacher**: a 2-layer character model learns `a+b` (operands 0–49) by SFT from
//!    scratch.
//! 2. **Student**: the same architecture from another seed, warmed up by a short SFT: it has
//!    the answer format and about a fifth of the answers, not the skill.
//! 3. **Four arms, one budget of generated tokens** (sampling is the cost that matters in
//!    post-training), each trained from the student with [`SEEDS`] seeds (sampling and data
//!    order):
//!    - **OPD**: the student samples answers, the teacher scores every token, the student
//!      moves toward the teacher: full-vocabulary reverse KL (mode-seeking, the usual OPD
//!      loss) and forward KL (GKD's β = 0) as two runs;
//!    - **SFT on teacher samples**: the teacher samples answers (its tokens are the budget),
//!      the student imitates them;
//!    - **GRPO**: the student samples 8 answers per question, 0/1 reward, group advantages.
//! 4. The table (mean ± sd over seeds at a quarter, half, three quarters and all of the budget,
//!    and the tokens each arm took to reach [`TARGET`] of the teacher's accuracy) and
//!    `runs/quickstart/compare.png` (and `.svg`: means with ± sd bands) show the ranking,
//!    whatever it is.

use std::path::Path;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use opd_cli::RunConfig;
use opd_cli::bands::{Arm, accuracy_curve, mean_sd, summary, write_bands};
use opd_cli::run::{RunReport, train};
use opd_cli::samples::teacher_samples;
use opd_cli::setup::tasks;
use opd_tasks::data::write_jsonl;

type Backend = Autodiff<Flex>;

/// Tokens each student may generate (for SFT: the teacher's samples).
const BUDGET: u64 = 60_000;

/// A mark past every run's end: a run stops at the first step that crosses the budget, and a
/// step generates at most 64 × 4 tokens.
const END: u64 = BUDGET + BUDGET / 100;

/// Seeds of every arm.
const SEEDS: [u64; 3] = [0, 1, 2];

/// The fraction of the teacher's held-out accuracy the table times each arm to.
const TARGET: f64 = 0.8;

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
        "  {:<40} {:>5} steps {:>8} generated tokens  held-out accuracy {accuracy:.3}  ({:.0} s)",
        report.dir.display(),
        report.steps,
        report.generated_tokens,
        clock.elapsed().as_secs_f64()
    );
    report
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
        "steps = 420\nprompts_per_step = 64\noptimizer = { learning_rate = 3e-3, warmup_steps = 20, min_lr_ratio = 1.0 }\nobjective = { method = \"sft\" }",
        "",
    ));
    let start = format!(
        "[model]\npath = \"{}\"",
        student.dir.join("final").display()
    );

    println!(
        "3. four arms from the student, {} seeds each, {BUDGET} generated tokens each",
        SEEDS.len()
    );
    let budget = format!("[budget]\ngenerated_tokens = {BUDGET}");
    // Each method at the best of the learning rates tried on seed 0 (docs/getting-started.md):
    // reverse KL 3e-4 / 1e-3 / 3e-3, forward KL 1e-3 / 3e-3 / 1e-2, GRPO 1e-4 / 3e-4 / 1e-3.
    let opd = |name: &str, divergence: &str, learning_rate: f64, seed: u64| {
        trained(&run_config(
            &format!("{name}/seed-{seed}"),
            &start,
            ARITHMETIC,
            &format!(
                "steps = 10000\nprompts_per_step = 64\nseed = {seed}\noptimizer = {{ learning_rate = {learning_rate}, min_lr_ratio = 1.0 }}\nobjective = {{ method = \"opd\", form = \"divergence\", divergence = \"{divergence}\" }}"
            ),
            &format!(
                "[teacher]\npath = \"{}\"\n\n{budget}",
                teacher_final.display()
            ),
        ))
    };
    let opd_reverse: Vec<RunReport> = SEEDS
        .iter()
        .map(|&s| opd("opd-reverse-kl", "reverse_kl", 1e-3, s))
        .collect();
    let opd_forward: Vec<RunReport> = SEEDS
        .iter()
        .map(|&s| opd("opd-forward-kl", "forward_kl", 3e-3, s))
        .collect();
    // The arithmetic split every run reads, as files for the run that trains on samples.
    let arithmetic = run_config("split", SCRATCH, ARITHMETIC, "", "");
    let (train_tasks, test_tasks) = tasks(&arithmetic.data).expect("arithmetic tasks");
    let test_file = root.join("test.jsonl");
    write_jsonl(&test_file, &test_tasks).expect("test written");
    let samples = teacher_samples::<Flex>(
        &teacher_final,
        &train_tasks,
        (BUDGET, 4),
        root,
        &Default::default(),
    )
    .expect("teacher samples");
    let sft: Vec<RunReport> = SEEDS
        .iter()
        .map(|&seed| {
            trained(&run_config(
                &format!("sft-on-teacher-samples/seed-{seed}"),
                &start,
                &format!(
                    "[data]\ntrain = \"{}\"\ntest = \"{}\"",
                    samples.display(),
                    test_file.display()
                ),
                &format!("steps = 10000\nprompts_per_step = 64\nseed = {seed}\noptimizer = {{ learning_rate = 3e-3, min_lr_ratio = 1.0 }}\nobjective = {{ method = \"sft\" }}"),
                &budget,
            ))
        })
        .collect();
    let grpo: Vec<RunReport> = SEEDS
        .iter()
        .map(|&seed| {
            trained(&run_config(
                &format!("grpo/seed-{seed}"),
                &start,
                ARITHMETIC,
                &format!("steps = 10000\nprompts_per_step = 8\nseed = {seed}\noptimizer = {{ learning_rate = 1e-4, min_lr_ratio = 1.0 }}\nobjective = {{ method = \"grpo\", group_size = 8 }}"),
                &budget,
            ))
        })
        .collect();

    let teacher_accuracy = teacher.evaluation.map_or(f64::NAN, |e| e.accuracy);
    let start_accuracy = student.evaluation.map_or(f64::NAN, |e| e.accuracy);
    println!(
        "\nheld-out accuracy (greedy, 200 questions), mean ± sd over {} seeds, against generated tokens:",
        SEEDS.len()
    );
    let runs = [
        ("OPD, reverse KL", &opd_reverse),
        ("OPD, forward KL", &opd_forward),
        ("SFT on teacher samples", &sft),
        ("GRPO", &grpo),
    ];
    let arms: Vec<Arm> = runs
        .iter()
        .map(|(name, seeds)| Arm {
            name,
            seeds: seeds
                .iter()
                .map(|run| accuracy_curve(&run.dir).expect("metrics"))
                .collect(),
        })
        .collect();
    print_table(&arms, TARGET * teacher_accuracy);
    println!(
        "(teacher {teacher_accuracy:.3}; student before {start_accuracy:.3}; tokens to {:.3} = {TARGET} × the teacher's accuracy: mean over the seeds that reached it)",
        TARGET * teacher_accuracy
    );
    // About one evaluation apart (every 25 steps, about 4 700 tokens).
    let marks: Vec<u64> = (0..12).map(|i| i * BUDGET / 12).chain([END]).collect();
    let references = [
        ("teacher", teacher_accuracy),
        ("student before", start_accuracy),
    ];
    write_bands(&arms, &marks, &references, &root.join("compare")).expect("the plot");
    println!(
        "\nwrote runs/quickstart/compare.png and .svg in {:.0} s",
        clock.elapsed().as_secs_f64()
    );
}

/// Each arm's accuracy (mean ± sd over seeds) at a quarter, half and three quarters of the
/// budget (each seed's last evaluation at or before the mark) and at the end, and the tokens
/// its seeds took to reach `target` (mean of those that did, and how many did).
fn print_table(arms: &[Arm], target: f64) {
    let marks = [BUDGET / 4, BUDGET / 2, 3 * BUDGET / 4, END];
    print!("{:<24}", "generated tokens");
    for mark in &marks[..3] {
        print!("{mark:>15}");
    }
    println!("{:>15}{:>20}", "end", format!("tokens to {target:.2}"));
    for arm in arms {
        print!("{:<24}", arm.name);
        for (_, mean, sd) in summary(arm, &marks) {
            print!("{:>15}", format!("{mean:.3} ± {sd:.3}"));
        }
        let reached: Vec<f64> = arm
            .seeds
            .iter()
            .filter_map(|curve| {
                curve
                    .iter()
                    .find(|(_, a)| *a >= target)
                    .map(|(t, _)| *t as f64)
            })
            .collect();
        let cell = match reached.len() {
            0 => "not reached".to_string(),
            n => format!("{:.0} ({n}/{})", mean_sd(&reached).0, arm.seeds.len()),
        };
        println!("{cell:>20}");
    }
}
