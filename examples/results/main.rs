//! # The results harness: a claim of the source documents, on SmolLM2, with several seeds
//!
//! `scripts/fetch-smollm2.sh && cargo run --release --example results -- NAME [SEEDS] [BUDGET]`
//!
//! Runs experiment `NAME` (below) for `SEEDS` seeds (default 3) at `BUDGET` generated tokens
//! per run, into `runs/results/NAME/` (a run already finished there is read, not rerun), and
//! writes into `docs/results/NAME/`: `table.md` (per arm: held-out accuracy, mean ± standard
//! deviation over seeds and each seed's; tokens; wall time; tokens to reach 90 % of the
//! teacher where there is one), `curves.png`/`.svg` (mean held-out accuracy against generated
//! tokens and against training wall time), and each run's exact `config.toml` and
//! `metrics.jsonl`. Every number of `docs/results.md` comes from these files.
//!
//! A seed `s` sets the trainer's seed (task order, sampling) and the LoRA adapters' seed; the
//! model, data, held-out questions and budget are the same for every arm.
//!
//! Experiments:
//! - `opd-teacher` (claim: on-policy distillation reaches a teacher with a fraction of RL's
//!   samples; and, between its forms, the full-vocabulary divergence against the sampled-token
//!   estimates): a teacher made by SFT of SmolLM2 (LoRA, seed 0) on the worked answers of
//!   `a ± b` until it is clearly better than the base; then fresh students distilled by OPD
//!   with the full reverse KL, seed 000's sampled-token surrogate and Tinker's sampled-token
//!   advantage, against GRPO (8 answers per question, 0/1 reward).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use opd_cli::RunConfig;
use opd_cli::config::{Budget, ServedProtocol, TeacherSource};
use opd_cli::folder::{METRICS, read_metrics};
use opd_cli::plot::{Curves, write_curves};
use opd_cli::record::Record;
use opd_cli::run::train;
use opd_trainers::{Objective, OpdConfig, OpdForm, SftConfig};
use plotters::prelude::*;

type Backend = Autodiff<Flex>;

/// One arm of an experiment: a label and its run file (seed and budget set per run).
struct Arm {
    label: &'static str,
    config: RunConfig,
}

/// What a finished run left.
struct Finished {
    records: Vec<Record>,
    seconds: f64,
}

impl Finished {
    fn evals(&self) -> impl DoubleEndedIterator<Item = &opd_cli::record::EvalRecord> {
        self.records.iter().filter_map(Record::eval)
    }

    fn final_accuracy(&self) -> f64 {
        self.evals().next_back().map_or(f64::NAN, |e| e.accuracy)
    }

    fn tokens(&self) -> u64 {
        self.records
            .iter()
            .map(Record::generated_tokens_total)
            .max()
            .unwrap_or(0)
    }

    /// Training seconds (the steps' phases, evaluations left out) before each evaluation.
    fn seconds_at(&self, step: usize) -> f64 {
        self.records
            .iter()
            .filter_map(Record::train)
            .filter(|m| m.step < step)
            .map(|m| m.seconds.rollout + m.seconds.teacher + m.seconds.train + m.seconds.optimizer)
            .sum()
    }
}

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `file` with `budget` tokens, seed `seed`, written to `dir`; evaluations on 100 held-out
/// questions about every quarter of the budget.
fn with_budget(
    mut config: RunConfig,
    dir: PathBuf,
    seed: u64,
    budget: u64,
    eval_every: usize,
) -> RunConfig {
    config.output.dir = dir;
    config.output.checkpoint_every = 0;
    config.output.eval_every = eval_every;
    config.output.eval_tasks = 100;
    config.train.steps = 100_000;
    config.train.seed = seed;
    if let Some(lora) = &mut config.model.lora {
        lora.seed = seed;
    }
    config.budget = Some(Budget {
        generated_tokens: budget,
    });
    config
}

fn run_file(path: &str) -> RunConfig {
    RunConfig::from_file(path).expect("a valid run file")
}

/// Trains `config` unless its folder already holds a finished run; returns its records and
/// training seconds.
fn finished(label: &str, config: &RunConfig) -> Finished {
    let dir = &config.output.dir;
    if !dir.join("final").is_dir() {
        let _ = std::fs::remove_dir_all(dir);
        let clock = Instant::now();
        let report = train::<Backend>(config, false, &Default::default()).expect("the run trains");
        println!(
            "  {label:<24} {:>4} steps {:>6} tokens  accuracy {:.2}  ({:.0} s)",
            report.steps,
            report.generated_tokens,
            report.evaluation.map_or(f64::NAN, |e| e.accuracy),
            clock.elapsed().as_secs_f64()
        );
    }
    let records = read_metrics(&dir.join(METRICS)).expect("the run's metrics");
    let mut run = Finished {
        records,
        seconds: 0.0,
    };
    run.seconds = run.seconds_at(usize::MAX);
    run
}

/// The arms of `opd-teacher`, and the teacher's accuracy: the teacher is trained first.
fn opd_teacher(root: &Path) -> (Vec<Arm>, Option<f64>) {
    let mut sft = run_file("configs/opsd.toml");
    sft.train.objective = Objective::Sft(SftConfig::default());
    // SFT counts the reference tokens it trains on (~14 per answer, 8 per step).
    let teacher = with_budget(sft, root.join("teacher"), 0, 4_000, 10);
    let teacher_run = finished("teacher (SFT, 4 000 tokens)", &teacher);
    let teacher_path = root.join("teacher/final");
    let opd = |form: OpdForm| {
        let mut config = run_file("configs/opsd.toml");
        config.teacher = Some(TeacherSource {
            name: None,
            path: Some(teacher_path.clone()),
            scratch: None,
            url: None,
            protocol: ServedProtocol::Opd,
            served_model: None,
            token: None,
            timeout_seconds: None,
            wait_seconds: None,
        });
        config.train.objective = Objective::Opd(OpdConfig {
            form,
            ..OpdConfig::default()
        });
        config
    };
    let arms = vec![
        Arm {
            label: "OPD reverse KL (full)",
            config: opd(OpdForm::Divergence {
                beta: 1.0,
                teacher_top_k: None,
            }),
        },
        Arm {
            label: "OPD surrogate (sampled)",
            config: opd(OpdForm::surrogate()),
        },
        Arm {
            label: "OPD advantage (sampled)",
            config: opd(OpdForm::Advantage {
                discount: 0.0,
                reward_weight: 0.0,
            }),
        },
        Arm {
            label: "GRPO",
            config: run_file("configs/grpo.toml"),
        },
    ];
    (arms, Some(teacher_run.final_accuracy()))
}

fn mean_and_spread(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn main() {
    opd_policy::allocator::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprintln!("usage: results NAME [SEEDS] [BUDGET]; experiments: opd-teacher");
        std::process::exit(2);
    };
    if !Path::new(MODEL).exists() {
        eprintln!("{MODEL} is missing: run scripts/fetch-smollm2.sh first");
        std::process::exit(1);
    }
    let seeds: u64 = args
        .get(1)
        .map_or(3, |s| s.parse().expect("SEEDS is a number"));
    let budget: u64 = args
        .get(2)
        .map_or(3_000, |s| s.parse().expect("BUDGET is a number"));
    let root = Path::new("runs/results").join(name);
    let out = Path::new("docs/results").join(name);
    std::fs::create_dir_all(out.join("runs")).expect("docs/results");
    println!("{name}: {seeds} seeds, {budget} generated tokens per run");
    let (arms, teacher) = match name.as_str() {
        "opd-teacher" => opd_teacher(&root),
        other => {
            eprintln!("no experiment named {other:?}; experiments: opd-teacher");
            std::process::exit(2);
        }
    };
    let mut results: Vec<(&str, Vec<Finished>)> = Vec::new();
    for arm in &arms {
        let mut runs = Vec::new();
        for seed in 0..seeds {
            let slug = format!("{}-s{seed}", slug(arm.label));
            // GRPO spends ~1 000 tokens a step (4 questions × 8 answers), OPD ~300.
            let every = if arm.label == "GRPO" { 1 } else { 3 };
            let config = with_budget(arm.config.clone(), root.join(&slug), seed, budget, every);
            let run = finished(&format!("{} seed {seed}", arm.label), &config);
            let kept = out.join("runs").join(&slug);
            std::fs::create_dir_all(&kept).expect("a results folder");
            for file in ["config.toml", METRICS] {
                std::fs::copy(config.output.dir.join(file), kept.join(file)).expect("copied");
            }
            runs.push(run);
        }
        results.push((arm.label, runs));
    }
    let table = table(name, budget, teacher, &results);
    std::fs::write(out.join("table.md"), &table).expect("table.md");
    println!("\n{table}");
    plot(&out.join("curves"), &results).expect("the curves");
    let curves: Vec<(String, &[Record])> = results
        .iter()
        .flat_map(|(label, runs)| {
            runs.iter()
                .enumerate()
                .map(move |(s, r)| (format!("{label} s{s}"), r.records.as_slice()))
        })
        .collect();
    let curves: Vec<Curves> = curves
        .iter()
        .map(|(name, records)| Curves { name, records })
        .collect();
    write_curves(&curves, &out.join("runs/all")).expect("the runs' curves");
    println!("wrote {}", out.display());
}

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

/// The Markdown table of an experiment.
fn table(
    name: &str,
    budget: u64,
    teacher: Option<f64>,
    results: &[(&str, Vec<Finished>)],
) -> String {
    let mut text = format!(
        "`cargo run --release --example results -- {name} {} {budget}`\n\n",
        results.first().map_or(0, |(_, r)| r.len())
    );
    if let Some(t) = teacher {
        text += &format!("Teacher: {t:.2} held-out accuracy. ");
    }
    let before: Vec<f64> = results
        .iter()
        .flat_map(|(_, runs)| {
            runs.iter()
                .filter_map(|r| r.evals().next().map(|e| e.accuracy))
        })
        .collect();
    text += &format!(
        "Before training (the base model: LoRA starts at zero): {:.2}.\n\n",
        mean_and_spread(&before).0
    );
    text +=
        "| arm | held-out accuracy (mean ± sd) | per seed | tokens (mean) | train wall s (mean) |";
    if teacher.is_some() {
        text += " tokens to 90 % of the teacher (per seed) |";
    }
    text += "\n|---|---|---|---|---|";
    if teacher.is_some() {
        text += "---|";
    }
    text += "\n";
    for (label, runs) in results {
        let accuracy: Vec<f64> = runs.iter().map(Finished::final_accuracy).collect();
        let (mean, sd) = mean_and_spread(&accuracy);
        let per_seed: Vec<String> = accuracy.iter().map(|a| format!("{a:.2}")).collect();
        let tokens = runs.iter().map(|r| r.tokens() as f64).sum::<f64>() / runs.len() as f64;
        let seconds = runs.iter().map(|r| r.seconds).sum::<f64>() / runs.len() as f64;
        text += &format!(
            "| {label} | {mean:.3} ± {sd:.3} | {} | {tokens:.0} | {seconds:.0} |",
            per_seed.join(", ")
        );
        if let Some(t) = teacher {
            let reached: Vec<String> = runs
                .iter()
                .map(|r| {
                    r.evals()
                        .find(|e| e.accuracy >= 0.9 * t)
                        .map_or("not reached".into(), |e| {
                            e.generated_tokens_total.to_string()
                        })
                })
                .collect();
            text += &format!(" {} |", reached.join(", "));
        }
        text += "\n";
    }
    text
}

/// Mean held-out accuracy (over seeds, at each evaluation) against mean generated tokens and
/// against mean training seconds, one line per arm.
fn plot(stem: &Path, results: &[(&str, Vec<Finished>)]) -> Result<(), Box<dyn std::error::Error>> {
    let series: Vec<(&str, Vec<Point>)> = results
        .iter()
        .map(|(label, runs)| {
            let n = runs.iter().map(|r| r.evals().count()).min().unwrap_or(0);
            let points = (0..n)
                .map(|i| {
                    let at: Vec<Point> = runs
                        .iter()
                        .map(|r| {
                            let e = r.evals().nth(i).expect("n evaluations");
                            (
                                e.generated_tokens_total as f64,
                                r.seconds_at(e.step),
                                e.accuracy,
                            )
                        })
                        .collect();
                    let k = at.len() as f64;
                    (
                        at.iter().map(|p| p.0).sum::<f64>() / k,
                        at.iter().map(|p| p.1).sum::<f64>() / k,
                        at.iter().map(|p| p.2).sum::<f64>() / k,
                    )
                })
                .collect();
            (*label, points)
        })
        .collect();
    for (path, svg) in [
        (stem.with_extension("png"), false),
        (stem.with_extension("svg"), true),
    ] {
        if svg {
            draw(
                SVGBackend::new(&path, (1200, 450)).into_drawing_area(),
                &series,
            )?;
        } else {
            draw(
                BitMapBackend::new(&path, (1200, 450)).into_drawing_area(),
                &series,
            )?;
        }
    }
    Ok(())
}

/// A point of a mean curve: (generated tokens, training seconds, held-out accuracy).
type Point = (f64, f64, f64);

/// A panel's title and what its x reads from a point.
type Axis = (&'static str, fn(&Point) -> f64);

/// Each arm's mean curve.
type Series<'a> = [(&'a str, Vec<Point>)];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    series: &Series,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let text = opd_cli::plot::register_system_font();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let axes: [Axis; 2] = [
        ("mean held-out accuracy vs generated tokens", |p| p.0),
        ("mean held-out accuracy vs training seconds", |p| p.1),
    ];
    for (area, (title, x)) in panels.iter().zip(axes) {
        let x1 = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(x))
            .fold(1.0, f64::max);
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(45);
        if text {
            builder.caption(title, ("sans-serif", 18));
        }
        let mut chart = builder.build_cartesian_2d(0.0..x1, 0.0..1.0)?;
        let mut mesh = chart.configure_mesh();
        if !text {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for ((label, points), color) in series.iter().zip(colors.iter().cycle()) {
            let line = chart.draw_series(LineSeries::new(
                points.iter().map(|p| (x(p), p.2)),
                color.stroke_width(2),
            ))?;
            if text {
                let color = *color;
                line.label(*label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
