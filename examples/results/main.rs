//! # The results harness: a claim of the source documents, on SmolLM2, with several seeds
//!
//! `scripts/fetch-smollm2.sh && cargo run --release --example results -- NAME [SEEDS] [BUDGET]`
//!
//! Runs experiment `NAME` ([`experiments::NAMES`]) for `SEEDS` seeds (default 3) at `BUDGET`
//! generated tokens per run (default 2 000), into `runs/results/` (a run already finished
//! there with the same identity, `identity.json`: run file, training code and the bytes of
//! the model, teacher and data files, is read, not rerun, so arms that experiments share are
//! trained once; a folder of another identity stops the harness, never deleted), and writes into `docs/results/NAME/`: `table.md` (per arm: held-out accuracy, mean ±
//! standard deviation over seeds and each seed's; each arm against the first, paired over seeds and over questions; tokens; training seconds; tokens to the
//! experiment's target; the old tasks after training for `forgetting`; the diagnostics'
//! first and last steps and the collapse watch's warnings), `curves.png`/`.svg` (mean held-out
//! accuracy against generated tokens and against training seconds), `bands.png`/`.svg` (the
//! mean over seeds with a ± sd band, base and teacher lines), and each run's exact
//! `config.toml`, `metrics.jsonl`, `outcomes.json` (the final model's answer to each held-out
//! question, right or wrong: the paired statistics' input) and `identity.json`, the teacher's
//! run among them (with `runs/all.png`, every run's panels). Every number
//! of `docs/results.md` comes from these files.
//!
//! A seed `s` sets the trainer's seed (task order, sampling) and the LoRA adapters' seed; the
//! model, data, held-out questions and budget are the same for every arm (an arm may stop at
//! a budget of its own: `forgetting`'s SFT stopped at OPD's new-task gain).

mod experiments;
mod facts;
mod identity;
mod report;
mod runs;

use std::path::Path;

use opd_cli::bands::{Arm, mean_sd, write_bands};
use opd_cli::folder::METRICS;
use opd_cli::plot::{Curves, write_curves};
use opd_cli::record::Record;

use experiments::{NAMES, Target, experiment};
use report::{Goal, diagnostics, paired, plot, table};
use runs::{Finished, OUTCOMES, RUNS, accuracy_on, finished, with_budget};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn usage() -> ! {
    eprintln!("usage: results NAME [SEEDS] [BUDGET]; experiments:");
    for (name, claim) in NAMES {
        eprintln!("  {name:<14} {claim}");
    }
    std::process::exit(2);
}

fn main() {
    opd_policy::allocator::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else { usage() };
    let number = |i: usize, default: u64| {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("{s:?} is not a number");
                usage()
            })
        })
    };
    let (seeds, budget) = (number(1, 3), number(2, 2_000));
    if !Path::new(MODEL).exists() {
        eprintln!("{MODEL} is missing: run scripts/fetch-smollm2.sh first");
        std::process::exit(1);
    }
    println!("{name}: {seeds} seeds, {budget} generated tokens per run");
    let Some(experiment) = experiment(name) else {
        eprintln!("no experiment named {name:?}");
        usage()
    };
    let out = Path::new("docs/results").join(name);
    std::fs::create_dir_all(out.join("runs")).expect("docs/results");
    let old: Vec<(&str, f64)> = experiment
        .old_tasks
        .iter()
        .map(|old| {
            let cache = Path::new(RUNS).join(old.cache_name("base-old-task"));
            (old.name, accuracy_on(Path::new(MODEL), &old.tasks, &cache))
        })
        .collect();
    let mut results: Vec<(&str, Vec<Finished>)> = Vec::new();
    for arm in &experiment.arms {
        let mut arm_runs = Vec::new();
        for seed in 0..seeds {
            let budget = arm.budget.unwrap_or(budget);
            let slug = format!("{}-{budget}-s{seed}", slug(arm.label));
            let dir = Path::new(RUNS).join(&slug);
            let config = with_budget(
                arm.config.clone(),
                dir.clone(),
                seed,
                budget,
                arm.eval_every,
            );
            let mut run = finished(&format!("{} seed {seed}", arm.label), &config);
            for old in &experiment.old_tasks {
                let cache = dir.join(old.cache_name("old-task"));
                let after = accuracy_on(&dir.join("final"), &old.tasks, &cache);
                run.old_tasks.push(after);
            }
            let kept = out.join("runs").join(&slug);
            std::fs::create_dir_all(&kept).expect("a results folder");
            for file in ["config.toml", METRICS, OUTCOMES] {
                std::fs::copy(dir.join(file), kept.join(file)).expect("copied");
            }
            std::fs::copy(identity::file_of(&dir), kept.join(identity::IDENTITY)).expect("copied");
            arm_runs.push(run);
        }
        results.push((arm.label, arm_runs));
    }
    // The runs that made the arms' teachers (`…/NAME/final`), published beside the arms.
    let teachers: std::collections::BTreeSet<&Path> = experiment
        .arms
        .iter()
        .filter_map(|arm| arm.config.teacher.as_ref()?.file()?.parent())
        .filter(|dir| identity::file_of(dir).exists())
        .collect();
    for dir in teachers {
        let kept = out
            .join("runs")
            .join(dir.file_name().expect("a run folder"));
        std::fs::create_dir_all(&kept).expect("a results folder");
        for file in ["config.toml", METRICS, OUTCOMES] {
            std::fs::copy(dir.join(file), kept.join(file)).expect("copied");
        }
        std::fs::copy(identity::file_of(dir), kept.join(identity::IDENTITY)).expect("copied");
    }
    let goal = experiment.target.as_ref().map(|target| match target {
        Target::Teacher(accuracy) => Goal {
            accuracy: 0.9 * accuracy,
            text: format!(
                "Teacher: {accuracy:.2} held-out accuracy; target 90 % of it, {:.2}.",
                0.9 * accuracy
            ),
        },
        Target::Arm(arm) => {
            let finals: Vec<f64> = results
                .iter()
                .filter(|(label, _)| label == arm)
                .flat_map(|(_, runs)| runs.iter().map(Finished::final_accuracy))
                .collect();
            let accuracy = mean_sd(&finals).0;
            Goal {
                accuracy,
                text: format!("Target: {arm}'s mean final accuracy, {accuracy:.2}."),
            }
        }
    });
    let command = format!("cargo run --release --example results -- {name} {seeds} {budget}");
    let table =
        table(&command, goal.as_ref(), &old, &results) + &paired(&results) + &diagnostics(&results);
    std::fs::write(out.join("table.md"), &table).expect("table.md");
    println!("\n{table}");
    plot(&out.join("curves"), &results).expect("the curves");
    bands(
        &out.join("bands"),
        &results,
        budget,
        experiment.target.as_ref(),
    );
    let labelled: Vec<(String, &[Record])> = results
        .iter()
        .flat_map(|(label, runs)| {
            runs.iter()
                .enumerate()
                .map(move |(s, r)| (format!("{label} s{s}"), r.records.as_slice()))
        })
        .collect();
    let curves: Vec<Curves> = labelled
        .iter()
        .map(|(name, records)| Curves { name, records })
        .collect();
    write_curves(&curves, &out.join("runs/all")).expect("the runs' curves");
    println!("wrote {}", out.display());
}

/// `bands.png`/`.svg`: each arm's mean held-out accuracy over seeds with a ± sd band, every
/// evaluation to each run's end, the base model's accuracy and the teacher's as lines.
fn bands(stem: &Path, results: &[(&str, Vec<Finished>)], budget: u64, target: Option<&Target>) {
    let arms: Vec<Arm> = results
        .iter()
        .map(|(label, runs)| Arm {
            name: label,
            seeds: runs
                .iter()
                .map(|r| {
                    r.evals()
                        .map(|e| (e.generated_tokens_total, e.accuracy))
                        .collect()
                })
                .collect(),
        })
        .collect();
    // Past every run's end: a run stops at the first step over the budget.
    let end = results
        .iter()
        .flat_map(|(_, runs)| runs.iter().map(Finished::tokens))
        .max()
        .unwrap_or(budget);
    let marks: Vec<u64> = (0..16).map(|i| i * end / 16).chain([end]).collect();
    let starts: Vec<f64> = results
        .iter()
        .flat_map(|(_, runs)| {
            runs.iter()
                .filter_map(|r| r.evals().next().map(|e| e.accuracy))
        })
        .collect();
    let mut references = vec![("base", mean_sd(&starts).0)];
    if let Some(Target::Teacher(accuracy)) = target {
        references.push(("teacher", *accuracy));
    }
    write_bands(&arms, &marks, &references, stem).expect("the bands");
}

/// `"OPD reverse KL (full)"` → `"opd-reverse-kl-full"`.
fn slug(label: &str) -> String {
    label
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}
