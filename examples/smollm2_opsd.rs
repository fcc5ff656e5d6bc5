//! # OPSD on SmolLM2-135M-Instruct, against SFT and GRPO, on a CPU
//!
//! `scripts/fetch-smollm2.sh && cargo run --release --example smollm2_opsd [-- BUDGET]`
//! (about 45 minutes on 2 cores at the default budget of 16 000 generated tokens per method)
//! writes `runs/smollm2/` and prints held-out accuracy before and after each method.
//!
//! **Task**: "What is a±b? Give the final answer after ####." with operands 0–20, 400
//! training and 100 held-out questions (`configs/opsd.toml`). The base model answers about
//! one in five held-out questions right (greedy): neither at zero nor near the top, so every
//! method has room to show what it does.
//!
//! **Three runs from the same LoRA-adapted student, under one budget of tokens:**
//! - **OPSD** (`configs/opsd.toml`): the student samples answers; the same model with its
//!   adapters off, shown the reference solution `a±b = c\n#### c`, scores every token; JSD
//!   (β = 0.5) toward it. Its tokens are the ones the student generated.
//! - **SFT** (the OPSD run file with `objective = { method = "sft" }`): the student imitates
//!   the reference solutions; its tokens are the reference tokens trained on.
//! - **GRPO** (`configs/grpo.toml`): 8 answers per question, reward 1 for the right final
//!   number, group-relative advantages.
//!
//! Held-out accuracy is greedy on the 100 questions, as `opd eval --config` measures it; the
//! table and `runs/smollm2/compare.png` (and `.svg`) show the ranking, whatever it is.
//! Measured at the default budget (one seed): before 0.23; after, OPSD 0.30, SFT 0.89, GRPO
//! 0.66 (`docs/trainers/opsd.md` has the curves and what they say). The results harness
//! (`docs/results.md`, claim 2; three seeds) finds the same for OPSD with SmolLM2 as its own
//! teacher, and that a privileged reader that uses the reference (SmolLM2 after SFT) makes
//! OPSD pass GRPO in under half its tokens: at 135 M, the self-teacher is what fails.

use std::path::Path;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use opd_cli::RunConfig;
use opd_cli::config::Budget;
use opd_cli::plot::plot_runs;
use opd_cli::record::Record;
use opd_cli::run::{RunReport, train};
use opd_trainers::{Objective, SftConfig};

type Backend = Autodiff<Flex>;

/// Tokens each method may spend unless the first argument says otherwise.
const DEFAULT_BUDGET: u64 = 16_000;

/// `file`'s run, written under `runs/smollm2/name`, stopped by the token budget.
fn run_config(file: &str, name: &str, budget: u64) -> RunConfig {
    let mut config = RunConfig::from_file(file).expect("a valid run file");
    config.output.dir = Path::new("runs/smollm2").join(name);
    config.output.checkpoint_every = 0;
    config.train.steps = 100_000;
    config.budget = Some(Budget {
        generated_tokens: budget,
    });
    config
}

fn trained(name: &str, config: &RunConfig) -> RunReport {
    let clock = Instant::now();
    let report = train::<Backend>(config, false, &Default::default()).expect("the run trains");
    println!(
        "  {name:<5} {:>4} steps {:>6} tokens  held-out accuracy {:.3}  ({:.0} s)",
        report.steps,
        report.generated_tokens,
        report.evaluation.map_or(f64::NAN, |e| e.accuracy),
        clock.elapsed().as_secs_f64()
    );
    report
}

fn main() {
    opd_policy::allocator::tune();
    let model = Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        eprintln!(
            "{} is missing: run scripts/fetch-smollm2.sh first",
            model.display()
        );
        std::process::exit(1);
    }
    let budget = match std::env::args().nth(1) {
        Some(arg) => arg.parse().expect("the budget is a number of tokens"),
        None => DEFAULT_BUDGET,
    };
    let root = Path::new("runs/smollm2");
    let _ = std::fs::remove_dir_all(root);
    let clock = Instant::now();

    println!("SmolLM2-135M-Instruct, LoRA, {budget} tokens per method:");
    // Evaluations about every quarter of the default budget: a step of OPSD spends ~400
    // tokens (8 answers), of GRPO ~1 600 (4 questions × 8 answers), of SFT ~110 (8 references).
    let mut opsd = run_config("configs/opsd.toml", "opsd", budget);
    opsd.output.eval_every = 10;
    let opsd = trained("OPSD", &opsd);
    let mut sft = run_config("configs/opsd.toml", "sft", budget);
    sft.train.objective = Objective::Sft(SftConfig::default());
    sft.output.eval_every = 36;
    let sft = trained("SFT", &sft);
    let mut grpo = run_config("configs/grpo.toml", "grpo", budget);
    grpo.output.eval_every = 3;
    let grpo = trained("GRPO", &grpo);

    let runs = [("OPSD", &opsd), ("SFT", &sft), ("GRPO", &grpo)];
    let named: Vec<(&str, &Path)> = runs.iter().map(|(n, r)| (*n, r.dir.as_path())).collect();
    let metrics = plot_runs(&named, &root.join("compare")).expect("the metrics and the plot");
    let records: Vec<(&str, Vec<Record>)> =
        runs.iter().map(|(name, _)| *name).zip(metrics).collect();
    println!("\nheld-out accuracy (greedy, 100 questions) against tokens spent:");
    for (name, records) in &records {
        let evals: Vec<String> = records
            .iter()
            .filter_map(|r| r.eval())
            .map(|e| format!("{}: {:.2}", e.generated_tokens_total, e.accuracy))
            .collect();
        println!("  {name:<5} {}", evals.join("  "));
    }
    let accuracy_at = |records: &[Record], first: bool| {
        let mut evals = records.iter().filter_map(|r| r.eval());
        let record = if first {
            evals.next()
        } else {
            evals.next_back()
        };
        record.map_or(f64::NAN, |e| e.accuracy)
    };
    println!("\n{:<6}{:>8}{:>8}", "", "before", "after");
    for (name, records) in &records {
        println!(
            "{name:<6}{:>8.2}{:>8.2}",
            accuracy_at(records, true),
            accuracy_at(records, false)
        );
    }

    println!(
        "\nwrote runs/smollm2/compare.png and .svg in {:.0} s",
        clock.elapsed().as_secs_f64()
    );
}
