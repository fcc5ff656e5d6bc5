//! The leading worker of a run: the run folder checked or resumed, the trainer built, and the
//! loop of steps with metrics, evaluations, checkpoints, curves and the final model (one
//! worker alone, or the first of a data-parallel run, [`crate::parallel`]).

use opd_divergences::TrainingBackend;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use burn::module::AutodiffModule;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opd_policy::Policy;
use opd_rollout::SamplingParams;
use opd_tasks::{Environment, Evaluation, Task, evaluate};
use opd_teachers::TeacherError;
use opd_trainers::checkpoint::{
    self, checkpoint_dir, checkpoints, latest_checkpoint, prune_checkpoints,
};
use opd_trainers::parallel::Replica;
use opd_trainers::{Flow, StepMetrics, TokensSpent, TrainError, Trainer, learning_rate};

use crate::config::{RunConfig, Weights};
use crate::error::{CliError, Result};
use crate::folder::{
    METRICS, MetricsLines, MetricsLog, RunFolder, remove_leftovers, save_final, write_atomically,
};
use crate::plot::{Curves, write_curves};
use crate::record::{EvalRecord, Record, TrainRecord};
use crate::setup::{TaskChecks, check_tasks, environment, load_model, load_teacher, splits};

/// The run file as the run was last started with.
pub const CONFIG: &str = "config.toml";

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
    /// Updates skipped as non-finite (in this process).
    pub skipped_updates: usize,
}

/// The greedy held-out evaluation of `trainer`'s student on the first `limit` test tasks.
fn held_out<B: TrainingBackend>(
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

/// The name of a signal number that asks a run to stop.
fn signal_name(signal: usize) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// What a checked resume continues from.
struct Resumed {
    /// The newest checkpoint, verified.
    checkpoint: PathBuf,
    /// The run file the run was last started with.
    saved: RunConfig,
}

/// Checks that the run in `folder` may continue as `config`, reading only: a newest
/// checkpoint that is intact (else an error naming the damaged file and offering the previous
/// checkpoint), a saved `config.toml` that differs only in [`crate::config::RESUMABLE`]
/// settings, and a run not yet finished.
fn check_resume(folder: &RunFolder, config: &RunConfig) -> Result<Resumed> {
    let dir = folder.dir();
    let refuse = |problem: String| CliError::Run {
        path: dir.to_path_buf(),
        problem,
    };
    let all = checkpoints(dir);
    let Some((done, checkpoint)) = all.last().cloned() else {
        return Err(refuse(
            "no checkpoint to resume from (the run stopped before its first one, or this is not \
             a run folder): remove the folder to start over"
                .into(),
        ));
    };
    let saved_path = dir.join(CONFIG);
    let saved = RunConfig::from_file(&saved_path)?;
    if let Some(key) = config.resume_difference(&saved) {
        return Err(refuse(format!(
            "was run with another `{key}` (see {}); a resumed run may change only {}",
            saved_path.display(),
            crate::config::RESUMABLE.join(", ")
        )));
    }
    if let Err(damaged) = checkpoint::verify(&checkpoint) {
        let previous = all[..all.len() - 1]
            .iter()
            .rev()
            .find(|(_, p)| checkpoint::verify(p).is_ok());
        let offer = match previous {
            Some((_, p)) => format!(
                "; the previous checkpoint {} is intact: remove {} and resume again to continue \
                 from it",
                p.display(),
                checkpoint.display()
            ),
            None => "; no earlier checkpoint is intact".into(),
        };
        return Err(refuse(format!("{damaged}{offer}")));
    }
    let spent = checkpoint::tokens_spent(&checkpoint)?;
    let budget_spent = config
        .budget
        .is_some_and(|b| spent.is_some_and(|s| spent_tokens(config, s) >= b.generated_tokens));
    // A run killed after its last checkpoint but before `final/` was whole resumes to write it.
    let finished = done >= config.train.steps || budget_spent;
    if finished && dir.join("final").is_dir() {
        return Err(refuse(format!(
            "finished at step {done} (train.steps = {}{}): raise train.steps (or the budget) to \
             continue it",
            config.train.steps,
            config
                .budget
                .map(|b| format!(", budget {} tokens", b.generated_tokens))
                .unwrap_or_default()
        )));
    }
    Ok(Resumed { checkpoint, saved })
}

/// The tokens a run's budget counts: those the student sampled; for SFT, which samples none,
/// those of the references it trained on (someone generated them: a teacher, a person).
fn spent_tokens(config: &RunConfig, spent: TokensSpent) -> u64 {
    if config.train.objective.settings().samples() {
        spent.generated
    } else {
        spent.trained
    }
}

/// Cuts `metrics.jsonl` back to the records of the first `done` steps (train records of
/// steps `< done`, evaluations at steps `≤ done`), atomically and keeping each kept line byte
/// for byte; a torn last line is dropped with a warning. Returns the kept records.
fn cut_back(path: &Path, done: usize) -> Result<Vec<Record>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let read = MetricsLines::read(path)?;
    if let Some(bytes) = read.torn_bytes {
        tracing::warn!(
            "{}: dropped a torn last line ({bytes} bytes: the run was stopped while writing it)",
            path.display()
        );
    }
    let total = read.lines.len();
    let kept: Vec<(String, Record)> = read
        .lines
        .into_iter()
        .filter(|(_, r)| match r {
            Record::Train(_) => r.step() < done,
            Record::Eval(_) => r.step() <= done,
        })
        .collect();
    if kept.len() < total || read.torn_bytes.is_some() {
        let text: String = kept.iter().map(|(line, _)| format!("{line}\n")).collect();
        write_atomically(path, text.as_bytes())?;
    }
    Ok(kept.into_iter().map(|(_, r)| r).collect())
}

/// A trainer built from `config` on `device` (one worker of a data-parallel run with a
/// `replica`), with what its evaluations need.
pub(crate) struct Built<B: TrainingBackend> {
    /// The trainer.
    pub trainer: Trainer<B>,
    /// The student's tokenizer.
    pub tokenizer: opd_policy::ChatTokenizer,
    /// The environment that grades answers.
    pub env: Rc<dyn Environment>,
    /// The held-out tasks.
    pub test_tasks: Vec<Task>,
}

/// Loads and checks everything `config` names (model, tasks, teachers) and builds its
/// trainer.
pub(crate) fn build<B: TrainingBackend>(
    config: &RunConfig,
    device: &B::Device,
    replica: Option<Replica<B::InnerBackend>>,
) -> Result<Built<B>> {
    let (student, tokenizer) = load_model::<B>(&config.model, device)?;
    let (train_split, test_split) = splits(&config.data)?;
    let env: Rc<dyn Environment> = environment(config.environment)?.into();
    let rewarded = config.train.objective.settings().uses_rewards();
    let checks = |graded: bool| TaskChecks {
        tokenizer: &tokenizer,
        context: student.max_context(),
        alphabet: match &config.model.weights {
            Weights::Scratch(scratch) => Some(scratch.alphabet.as_str()),
            Weights::File(_) => None,
        },
        graded_by: graded.then_some(&*env),
    };
    check_tasks(&train_split, &checks(rewarded))?;
    check_tasks(&test_split, &checks(true))?;
    let teacher = match &config.teacher {
        Some(source) => Some(load_teacher::<B>(source, &student, &tokenizer, device)?),
        None => None,
    };
    let named = config
        .teachers
        .iter()
        .map(|source| {
            let name = source.name.clone().unwrap_or_default();
            Ok((
                name,
                load_teacher::<B>(source, &student, &tokenizer, device)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut builder = Trainer::builder(
        config.train.clone(),
        student,
        tokenizer.clone(),
        train_split.tasks,
        Rc::clone(&env),
    );
    if let Some(teacher) = teacher {
        builder = builder.teacher_boxed(teacher);
    }
    for (name, teacher) in named {
        builder = builder.named_teacher(name, teacher);
    }
    if let Some(replica) = replica {
        builder = builder.replica(replica);
    }
    Ok(Built {
        trainer: builder.build()?,
        tokenizer,
        env,
        test_tasks: test_split.tasks,
    })
}

/// The run as its writer drives it: alone, or as worker 0 of a data-parallel run
/// (`replica`), whose other workers follow its steps ([`crate::parallel`]).
pub(crate) fn lead<B: TrainingBackend>(
    config: &RunConfig,
    resume: bool,
    device: &B::Device,
    stop: &AtomicUsize,
    replica: Option<Replica<B::InnerBackend>>,
) -> Result<RunReport> {
    let dir = config.output.dir.clone();
    let (_folder, resumed) = open_folder(config, resume)?;
    let metrics_path = dir.join(METRICS);
    let Built {
        mut trainer,
        tokenizer,
        env,
        test_tasks,
    } = build::<B>(config, device, replica)?;
    let mut records = restore(&mut trainer, resumed.as_ref(), config)?;
    let text = toml::to_string_pretty(config).expect("a run config serializes");
    write_atomically(&dir.join(CONFIG), text.as_bytes())?;
    let mut log = MetricsLog::append_to(&metrics_path)?;
    let spent = |trainer: &Trainer<B>| spent_tokens(config, trainer.tokens_spent());
    let mut generated = spent(&trainer);

    let steps = config.train.steps;
    let bar = progress(steps as u64, trainer.steps_done() as u64);
    let out = &config.output;
    let max_new_tokens = config.train.sampling.max_new_tokens;
    // A held-out evaluation, logged and kept; the curves redrawn.
    let evaluation = |trainer: &Trainer<B>,
                      generated: u64,
                      log: &mut MetricsLog,
                      records: &mut Vec<Record>|
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
            let record = Record::Eval(EvalRecord {
                step: done,
                generated_tokens_total: generated,
                accuracy: e.accuracy,
                reward: e.reward,
                answers: e.answers,
            });
            log.append(&record)?;
            records.push(record);
        }
        plot_run(&dir, records)?;
        Ok(held)
    };
    let save = |trainer: &Trainer<B>| -> Result<PathBuf> {
        let path = checkpoint_dir(&dir, trainer.steps_done());
        trainer.save_checkpoint(&path)?;
        prune_checkpoints(&dir, out.keep_checkpoints)?;
        Ok(path)
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
    let (taken_before, mut skipped) = (trainer.steps_done(), 0);
    let within_budget = !over_budget(generated);
    // After each of the trainer's steps: the metrics line, a stop on a signal (with a
    // checkpoint), evaluations and checkpoints when due, the budget.
    let after_step = |trainer: &Trainer<B>, metrics: StepMetrics| -> Result<Flow> {
        generated = spent(trainer);
        skipped += metrics.skipped_updates;
        bar.set_position(trainer.steps_done() as u64);
        bar.set_message(format!(
            "loss {:.4} reward {:.3} {:.0} tok/s",
            metrics.loss, metrics.reward_mean, metrics.tokens_per_second.rollout
        ));
        let record = Record::Train(Box::new(TrainRecord {
            metrics,
            generated_tokens_total: generated,
        }));
        log.append(&record)?;
        records.push(record);
        let done = trainer.steps_done();
        let signal = stop.load(Ordering::SeqCst);
        if signal != 0 {
            bar.finish_and_clear();
            return Err(CliError::Stopped {
                signal: signal_name(signal),
                step: done,
                checkpoint: save(trainer)?,
            });
        }
        let finished = done == steps || over_budget(generated);
        let due = |every: usize| (every > 0 && done.is_multiple_of(every)) || finished;
        if due(out.eval_every) {
            last_eval = evaluation(trainer, generated, &mut log, &mut records)?.or(last_eval);
        }
        if due(out.checkpoint_every) {
            save(trainer)?;
        }
        Ok(if finished { Flow::Stop } else { Flow::Continue })
    };
    if within_budget {
        let trained = trainer.train_with(after_step);
        if let Err(CliError::Train(TrainError::Teacher(e @ TeacherError::Remote { .. }))) = trained
        {
            // The step failed before its first update: the trainer is as the last step left it.
            bar.finish_and_clear();
            return Err(teacher_gone(&e, trainer.steps_done(), save(&trainer)?, dir));
        }
        trained?;
    }
    trainer.leave_group();
    bar.finish_and_clear();
    save_final(&trainer, &tokenizer, &dir)?;
    let updates = (trainer.steps_done() - taken_before) * config.train.mini_batches;
    check_skipped(skipped, updates, &dir)?;
    Ok(RunReport {
        dir,
        steps: trainer.steps_done(),
        generated_tokens: generated,
        evaluation: last_eval,
        skipped_updates: skipped,
    })
}

/// The run folder locked for this run: for `resume`, with its newest checkpoint checked
/// ([`check_resume`]); else new or empty (an earlier run or others' files are refused).
fn open_folder(config: &RunConfig, resume: bool) -> Result<(RunFolder, Option<Resumed>)> {
    let dir = &config.output.dir;
    if resume && !dir.is_dir() {
        return Err(CliError::Run {
            path: dir.clone(),
            problem: "no such run folder to resume".into(),
        });
    }
    let folder = RunFolder::lock(dir)?;
    if resume {
        let resumed = check_resume(&folder, config)?;
        return Ok((folder, Some(resumed)));
    }
    let entries = folder.entries()?;
    if !entries.is_empty() {
        let holds_run = dir.join(METRICS).exists() || latest_checkpoint(dir).is_some();
        let problem = if holds_run {
            "holds an earlier run: pass --resume to continue it, or choose another output.dir"
                .to_string()
        } else {
            format!(
                "holds files that are not this run's ({}): a fresh run writes into a new or \
                 empty folder",
                entries.join(", ")
            )
        };
        return Err(CliError::Run {
            path: dir.clone(),
            problem,
        });
    }
    Ok((folder, None))
}

/// The trainer's state resumed from the checkpoint (refused, with nothing written, when it is
/// not this run's), and only then the metrics cut back to its steps; the records kept.
fn restore<B: TrainingBackend>(
    trainer: &mut Trainer<B>,
    resumed: Option<&Resumed>,
    config: &RunConfig,
) -> Result<Vec<Record>> {
    let dir = &config.output.dir;
    remove_leftovers(dir)?;
    let Some(resumed) = resumed else {
        return Ok(Vec::new());
    };
    trainer.resume(&resumed.checkpoint)?;
    let done = trainer.steps_done();
    let records = cut_back(&dir.join(METRICS), done)?;
    warn_schedule(&resumed.saved, config, done);
    tracing::info!("resumed {} at step {done}", resumed.checkpoint.display());
    Ok(records)
}

/// The error of a run whose served teacher stopped answering: it names the checkpoint that
/// `--resume` continues from.
fn teacher_gone(error: &TeacherError, steps: usize, checkpoint: PathBuf, dir: PathBuf) -> CliError {
    CliError::Run {
        path: dir,
        problem: format!(
            "{error}; the run stopped after step {steps} with a checkpoint in {}: resume it with \
             --resume once the teacher answers",
            checkpoint.display()
        ),
    }
}

/// A warning when updates were skipped as non-finite, and an error when most were.
fn check_skipped(skipped: usize, updates: usize, dir: &Path) -> Result<()> {
    if skipped > 0 {
        tracing::warn!(
            "{skipped} of the {updates} updates were skipped as non-finite (see the warnings in {})",
            dir.join(METRICS).display()
        );
    }
    if skipped * 2 > updates {
        return Err(CliError::Run {
            path: dir.to_path_buf(),
            problem: format!(
                "{skipped} of the {updates} updates were skipped as non-finite: the model barely \
                 trained (lower optimizer.learning_rate)"
            ),
        });
    }
    Ok(())
}

/// Says how the learning rate moves when `train.steps` changed on resume: warmup and cosine
/// run over `train.steps`, so a new horizon moves the schedule from the next step on.
fn warn_schedule(saved: &RunConfig, config: &RunConfig, done: usize) {
    let (before, after) = (saved.train.steps, config.train.steps);
    if before == after {
        return;
    }
    let minis = config.train.mini_batches;
    let o = &config.train.optimizer;
    let old = learning_rate(o, done * minis, before * minis);
    let new = learning_rate(o, done * minis, after * minis);
    tracing::warn!(
        "train.steps changed from {before} to {after}: the cosine now ends at step {after}, so \
         the learning rate at step {done} is {new:.3e} where it would have been {old:.3e}"
    );
}

/// Redraws `curves.png` and `curves.svg` in the run folder.
fn plot_run(dir: &Path, records: &[Record]) -> Result<()> {
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
