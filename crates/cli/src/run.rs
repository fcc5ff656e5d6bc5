//! `opd train`: a run file's trainer driven to the end, with metrics, evaluations, checkpoints,
//! curves and the final model written into the run folder.
//!
//! The folder holds `config.toml` (a copy of the run file), `metrics.jsonl` (one line per
//! step, `"kind": "train"`, and per evaluation, `"kind": "eval"`), `curves.png`/`.svg`,
//! `step-NNNNNN/` checkpoints (the newest `keep_checkpoints`) and, at the end, `final/`: the
//! student as a Hugging Face folder (adapters merged).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opd_divergences::DivergenceBackend;
use opd_policy::SaveDtype;
use opd_rollout::SamplingParams;
use opd_teachers::External;
use opd_trainers::checkpoint::{checkpoint_dir, latest_checkpoint, prune_checkpoints};
use opd_trainers::{Environment, Evaluation, Objective, StepMetrics, Task, Trainer, evaluate};
use serde_json::{Value, json};

use crate::config::RunConfig;
use crate::error::{CliError, Result};
use crate::plot::{Curves, write_curves};
use crate::setup::{environment, load_model, tasks};

/// The metrics file of a run folder.
pub const METRICS: &str = "metrics.jsonl";

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run folder.
    pub dir: PathBuf,
    /// Steps taken (in this and earlier, resumed, processes).
    pub steps: usize,
    /// Tokens the student generated in rollouts (for SFT: the reference tokens trained on).
    pub generated_tokens: u64,
    /// The last held-out evaluation.
    pub evaluation: Option<Evaluation>,
}

/// The lines of a `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| CliError::Run {
                path: path.to_path_buf(),
                problem: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends records to `metrics.jsonl`, flushing each line.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    fn append(&mut self, record: &Value) -> Result<()> {
        writeln!(self.file, "{record}").map_err(io(&self.path))?;
        self.file.flush().map_err(io(&self.path))
    }
}

/// The greedy held-out evaluation of `trainer`'s student on the first `limit` test tasks.
fn held_out<B: AutodiffBackend + DivergenceBackend>(
    trainer: &Trainer<B>,
    tokenizer: &opd_policy::ChatTokenizer,
    env: &dyn Environment,
    test: &[Task],
    limit: usize,
    max_new_tokens: usize,
) -> Result<Option<Evaluation>> {
    if test.is_empty() {
        return Ok(None);
    }
    let n = if limit == 0 {
        test.len()
    } else {
        limit.min(test.len())
    };
    let params = SamplingParams::greedy(max_new_tokens);
    Ok(Some(evaluate(
        &trainer.student().valid(),
        tokenizer,
        env,
        &test[..n],
        &params,
    )?))
}

/// Runs `config` into its output folder on `device`: from scratch, or with `resume` from the
/// newest checkpoint there. A fresh run refuses a folder that already holds one.
pub fn train<B: AutodiffBackend + DivergenceBackend>(
    config: &RunConfig,
    resume: bool,
    device: &B::Device,
) -> Result<RunReport> {
    let dir = config.output.dir.clone();
    let metrics_path = dir.join(METRICS);
    let checkpoint = latest_checkpoint(&dir);
    if !resume && (checkpoint.is_some() || metrics_path.exists()) {
        return Err(CliError::Run {
            path: dir,
            problem:
                "holds an earlier run: pass --resume to continue it, or choose another output.dir"
                    .into(),
        });
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let copy = dir.join("config.toml");
    let text = toml::to_string_pretty(config).expect("a run config serializes");
    std::fs::write(&copy, text).map_err(io(&copy))?;

    let (student, tokenizer) = load_model::<B>(&config.model, device)?;
    let (train_tasks, test_tasks) = tasks(&config.data)?;
    let env: Rc<dyn Environment> = environment(config.environment)?.into();
    let mut trainer = Trainer::new(
        config.train.clone(),
        student,
        tokenizer.clone(),
        train_tasks,
        Rc::clone(&env),
    )?;
    if let Some(source) = &config.teacher {
        let (teacher, teacher_tokenizer) = load_model::<B::InnerBackend>(source, device)?;
        let external = External::new(teacher, &teacher_tokenizer, trainer.student(), &tokenizer)
            .map_err(opd_trainers::TrainError::from)?;
        trainer = trainer.with_teacher(external);
    }

    // Resume: the trainer's state, and the metrics of the steps the checkpoint holds.
    let mut records = Vec::new();
    if resume && let Some(checkpoint) = &checkpoint {
        trainer.resume(checkpoint)?;
        if metrics_path.exists() {
            records = read_metrics(&metrics_path)?;
        }
        let done = trainer.steps_done() as u64;
        records.retain(|r| match r["kind"].as_str() {
            Some("train") => r["step"].as_u64().is_some_and(|s| s < done),
            _ => r["step"].as_u64().is_some_and(|s| s <= done),
        });
        tracing::info!("resumed {} at step {done}", checkpoint.display());
    }
    let mut log = MetricsLog {
        path: metrics_path.clone(),
        file: std::fs::File::create(&metrics_path).map_err(io(&metrics_path))?,
    };
    for record in &records {
        log.append(record)?;
    }
    // The tokens a step spends: those the student sampled; for SFT, which samples none, those
    // of the references it trained on (someone generated them: a teacher, a person).
    let spent_key = match config.train.objective {
        Objective::Sft(_) => "trained_tokens",
        _ => "generated_tokens",
    };
    let spent = |record: &Value| record[spent_key].as_u64().unwrap_or(0);
    let mut generated: u64 = records
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(spent)
        .sum();

    let steps = config.train.steps;
    let bar = progress(steps as u64, trainer.steps_done() as u64);
    let out = &config.output;
    let max_new_tokens = config.train.sampling.max_new_tokens;
    // A held-out evaluation, logged and kept; the curves redrawn.
    let evaluation = |trainer: &Trainer<B>,
                      generated: u64,
                      log: &mut MetricsLog,
                      records: &mut Vec<Value>|
     -> Result<Option<Evaluation>> {
        let held = held_out(
            trainer,
            &tokenizer,
            &*env,
            &test_tasks,
            out.eval_tasks,
            max_new_tokens,
        )?;
        if let Some(e) = &held {
            let done = trainer.steps_done();
            bar.suspend(|| tracing::info!("step {done}: held-out accuracy {:.3}", e.accuracy));
            let record = json!({
                "kind": "eval",
                "step": done,
                "generated_tokens_total": generated,
                "accuracy": e.accuracy,
                "reward": e.reward,
                "answers": e.answers,
            });
            log.append(&record)?;
            records.push(record);
        }
        plot_run(&dir, records)?;
        Ok(held)
    };
    let mut last_eval = None;
    if trainer.steps_done() == 0 {
        last_eval = evaluation(&trainer, 0, &mut log, &mut records)?;
    }
    let over_budget = |generated: u64| {
        config
            .budget
            .is_some_and(|b| generated >= b.generated_tokens)
    };
    while trainer.steps_done() < steps && !over_budget(generated) {
        let metrics: StepMetrics = trainer.step()?;
        let mut record = serde_json::to_value(&metrics).expect("metrics serialize");
        generated += spent(&record);
        record["kind"] = json!("train");
        record["generated_tokens_total"] = json!(generated);
        log.append(&record)?;
        records.push(record);
        bar.set_position(trainer.steps_done() as u64);
        bar.set_message(format!(
            "loss {:.4} reward {:.3} {:.0} tok/s",
            metrics.loss, metrics.reward_mean, metrics.tokens_per_second.rollout
        ));
        let done = trainer.steps_done();
        let finished = done == steps || over_budget(generated);
        let due = |every: usize| (every > 0 && done % every == 0) || finished;
        if due(out.eval_every) {
            last_eval = evaluation(&trainer, generated, &mut log, &mut records)?.or(last_eval);
        }
        if due(out.checkpoint_every) {
            trainer.save_checkpoint(checkpoint_dir(&dir, done))?;
            prune_checkpoints(&dir, out.keep_checkpoints)?;
        }
    }
    bar.finish_and_clear();
    let final_dir = dir.join("final");
    opd_policy::save(trainer.student(), &tokenizer, &final_dir, SaveDtype::F32)?;
    Ok(RunReport {
        dir,
        steps: trainer.steps_done(),
        generated_tokens: generated,
        evaluation: last_eval,
    })
}

/// Redraws `curves.png` and `curves.svg` in the run folder.
fn plot_run(dir: &Path, records: &[Value]) -> Result<()> {
    let run = Curves {
        name: "run",
        records,
    };
    write_curves(&[run], &dir.join("curves"))
}

/// A progress bar over the steps with the loss, reward, rollout tokens/s and ETA; hidden
/// when stderr is not a terminal.
fn progress(steps: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
            .expect("a valid template"),
    );
    bar.set_position(done);
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}
