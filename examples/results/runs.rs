//! Running an arm's seeds, and what a finished run left.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use opd_cli::RunConfig;
use opd_cli::config::{Budget, EnvironmentConfig};
use opd_cli::folder::{METRICS, read_metrics};
use opd_cli::record::{EvalRecord, Record};
use opd_cli::run::train;
use opd_cli::setup::{environment, splits};
use opd_rollout::SamplingParams;
use opd_rollout::generate;
use opd_tasks::Task;
use opd_tasks::prompt_ids;
use opd_trainers::StepMetrics;

use crate::identity::{self, Identity};

type Backend = Autodiff<Flex>;

/// Where every run of every experiment lives: `runs/results/{arm}-{budget}-s{seed}`, so an
/// arm that two experiments share (same label, same run file) is trained once.
pub const RUNS: &str = "runs/results";

/// What a finished run left.
pub struct Finished {
    pub records: Vec<Record>,
    /// Training seconds (the steps' phases, evaluations left out).
    pub seconds: f64,
    /// Accuracy on each of the experiment's old tasks after training (forgetting).
    pub old_tasks: Vec<f64>,
    /// Whether the saved final model answers each held-out question right (greedy), in the
    /// questions' order: what the paired statistics compare.
    pub outcomes: Vec<bool>,
}

impl Finished {
    pub fn evals(&self) -> impl DoubleEndedIterator<Item = &EvalRecord> {
        self.records.iter().filter_map(Record::eval)
    }

    pub fn steps(&self) -> impl Iterator<Item = &StepMetrics> {
        self.records.iter().filter_map(Record::train)
    }

    pub fn final_accuracy(&self) -> f64 {
        self.evals().next_back().map_or(f64::NAN, |e| e.accuracy)
    }

    pub fn tokens(&self) -> u64 {
        self.records
            .iter()
            .map(Record::generated_tokens_total)
            .max()
            .unwrap_or(0)
    }

    /// Training seconds before the evaluation after `step` steps.
    pub fn seconds_at(&self, step: usize) -> f64 {
        self.steps()
            .filter(|m| m.step < step)
            .map(|m| m.seconds.rollout + m.seconds.teacher + m.seconds.train + m.seconds.optimizer)
            .sum()
    }

    /// The generated tokens at the first evaluation at or above `accuracy`.
    pub fn tokens_to(&self, accuracy: f64) -> Option<u64> {
        self.evals()
            .find(|e| e.accuracy >= accuracy - 1e-9)
            .map(|e| e.generated_tokens_total)
    }
}

/// `config` with `budget` generated tokens and seed `seed` (trainer and LoRA), written to
/// `dir`, evaluated on 100 held-out questions every `eval_every` steps.
pub fn with_budget(
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

/// A committed run file.
pub fn run_file(path: &str) -> RunConfig {
    RunConfig::from_file(path).expect("a valid run file")
}

/// Trains `config` unless its folder holds a finished run of the same [`Identity`] (run file,
/// training code, and the bytes of the files it reads); resumes one of the same identity that
/// did not finish from its checkpoint, or, without one, keeps it beside as
/// `DIR.interrupted-N` and trains again; returns what the run left. A folder holding a run of another identity is
/// never deleted: the harness stops, naming the folder and what differs.
pub fn finished(label: &str, config: &RunConfig) -> Finished {
    // The checks `opd train` makes of a run file: a saved config that does not pass them would
    // never compare equal, and the run would be trained again each time.
    config
        .check()
        .unwrap_or_else(|problem| panic!("{label}: {problem}"));
    let dir = &config.output.dir;
    let identity = Identity::of(config);
    let saved = Identity::saved(dir);
    let done = dir.join("final").is_dir();
    match saved {
        Some(saved) if saved == identity && done => {}
        Some(saved) if saved != identity => {
            eprintln!(
                "{} holds a run of another identity (it differs in: {}): move it away or \
                 remove it, then run the experiment again",
                dir.display(),
                identity.difference(&saved)
            );
            std::process::exit(1);
        }
        None if dir.exists() => {
            eprintln!(
                "{} exists without {} (a run of an earlier harness, or not a run): move it \
                 away or remove it, then run the experiment again",
                dir.display(),
                identity::file_of(dir).display()
            );
            std::process::exit(1);
        }
        _ => {
            // A fresh folder, or a run of this identity that stopped before its end.
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).expect("the runs' folder");
            }
            identity.save(dir);
            let resume = opd_trainers::checkpoint::latest_checkpoint(dir).is_some();
            if dir.exists() && !resume {
                // Stopped before its first checkpoint: kept beside, and started again.
                let aside = (1..)
                    .map(|n| dir.with_file_name(format!("{}.interrupted-{n}", dir_name(dir))))
                    .find(|p| !p.exists())
                    .expect("a free name");
                std::fs::rename(dir, &aside).expect("the interrupted run moved aside");
                println!(
                    "  {} stopped before a checkpoint: kept as {}",
                    dir.display(),
                    aside.display()
                );
            }
            let clock = Instant::now();
            let report =
                train::<Backend>(config, resume, &Default::default()).expect("the run trains");
            println!(
                "  {label:<32} {:>4} steps {:>6} tokens  accuracy {:.2}  ({:.0} s)",
                report.steps,
                report.generated_tokens,
                report.evaluation.map_or(f64::NAN, |e| e.accuracy),
                clock.elapsed().as_secs_f64()
            );
        }
    }
    let records = read_metrics(&dir.join(METRICS)).expect("the run's metrics");
    let mut run = Finished {
        records,
        seconds: 0.0,
        old_tasks: Vec::new(),
        outcomes: held_out_outcomes(config),
    };
    run.seconds = run.seconds_at(usize::MAX);
    run
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned())
}

/// The file of a run's held-out outcomes: a JSON list of 0 and 1, one per question.
pub const OUTCOMES: &str = "outcomes.json";

/// Whether the final model of the run `config` answers each of its held-out questions right
/// (greedy, at most the run's `max_new_tokens`, the questions its evaluations use); cached in
/// the run's [`OUTCOMES`].
fn held_out_outcomes(config: &RunConfig) -> Vec<bool> {
    let cache = config.output.dir.join(OUTCOMES);
    if let Some(saved) = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<u8>>(&t).ok())
    {
        return saved.into_iter().map(|o| o == 1).collect();
    }
    let (_, test) = splits(&config.data).expect("the run's held-out questions");
    let n = config.output.eval_tasks.min(test.tasks.len());
    let tasks = &test.tasks[..n];
    let env = environment(config.environment).expect("the run's environment");
    let final_model = config.output.dir.join("final");
    let (policy, tokenizer) =
        opd_policy::load::<Flex>(&final_model, &Default::default()).expect("the final model");
    let prompts: Vec<Vec<u32>> = tasks
        .iter()
        .map(|t| prompt_ids(&tokenizer, &t.prompt).expect("a prompt"))
        .collect();
    let params = SamplingParams::greedy(config.train.sampling.max_new_tokens);
    let batch = generate(&policy, &tokenizer, &prompts, &params).expect("the held-out answers");
    let mut outcomes = vec![false; n];
    for sample in &batch.samples {
        outcomes[sample.prompt_index] = env
            .evaluate(&tasks[sample.prompt_index], &sample.text)
            .correct;
    }
    let bits: Vec<u8> = outcomes.iter().map(|&o| u8::from(o)).collect();
    std::fs::write(&cache, serde_json::to_string(&bits).expect("json")).expect("outcomes.json");
    outcomes
}

/// Greedy accuracy of the model at `model` on `tasks` (answers of at most 64 tokens, as the
/// runs' own evaluations), graded by their final number; cached in `cache` (one number).
pub fn accuracy_on(model: &Path, tasks: &[Task], cache: &Path) -> f64 {
    if let Some(a) = std::fs::read_to_string(cache)
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        return a;
    }
    let env = environment(EnvironmentConfig::Math).expect("the math environment");
    let (policy, tokenizer) =
        opd_policy::load::<Flex>(model, &Default::default()).expect("the trained model");
    let e = opd_tasks::evaluate(
        &policy,
        &tokenizer,
        &*env,
        tasks,
        &SamplingParams::greedy(64),
    )
    .expect("the old task evaluates");
    std::fs::write(cache, format!("{}\n", e.accuracy)).expect("the cached accuracy");
    e.accuracy
}
