//! The training loop every method runs. One [`Trainer::step`] reads top to bottom:
//! prompts → rollouts → advantages → targets (per micro-batch, before any update) → loss and
//! gradients → optimizer step (the teacher follows) → metrics.

use opd_divergences::TrainingBackend;
use std::time::Instant;

use burn::optim::{GradientsParams, Optimizer};
use opd_policy::{ChatTokenizer, FusedAdamW, Llama, Trainable};
use opd_tasks::{Environment, Task};

use crate::config::{OnNonFinite, TrainConfig};
use crate::error::{Result, TrainError};
use crate::measure::diagnostics::CollapseState;
use crate::measure::metrics::StepMetrics;
use crate::measure::telemetry::{Step, Telemetry, watch_collapse};
use crate::method::{Method, Rollouts, Sizes};
use crate::micro::{Micro, RowSplit, prepare};
use crate::order::TaskOrder;
use crate::parallel::Replica;
use crate::rows::{self, StepRows};
use crate::schedule::learning_rate;
use crate::state::{RunProgress, SavedState, StudentOptimizer, TokensSpent, TrainerState};
use crate::update::{Gradients, LossSettings, counts, gradients};
use crate::{fingerprint, grads};
use opd_divergences::Counts;

/// Steps in a row whose every update is skipped as non-finite before the run stops with
/// [`TrainError::NonFiniteRun`]: past this, the weights no longer move and the run only
/// spends time.
pub const MAX_SKIPPED_STEPS_IN_A_ROW: usize = 5;

/// Steps between two checks that the workers of a data-parallel run hold the same weights
/// (also checked before the first step and after the last).
const CHECK_EVERY: usize = 10;

/// What the caller of [`Trainer::train_with`] says after each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Take the next step (until `steps`).
    Continue,
    /// Stop here.
    Stop,
}

/// Trains a student with the method an [`crate::Objective`] names, on tasks graded by an
/// [`Environment`].
pub struct Trainer<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    config: TrainConfig,
    /// Out only while an optimizer step consumes it.
    student: Option<M>,
    tokenizer: ChatTokenizer,
    optimizer: StudentOptimizer<B, M>,
    method: Box<dyn Method<B, M>>,
    environment: Box<dyn Environment>,
    tasks: Vec<Task>,
    order: TaskOrder,
    step: usize,
    collapse: CollapseState,
    spent: TokensSpent,
    /// Steps in a row whose every update was skipped as non-finite.
    skipped_in_a_row: usize,
    /// This worker's place in a data-parallel run.
    replica: Option<Replica<B::InnerBackend>>,
    /// Seconds this step spent waiting on exchanges with the other workers.
    exchange_seconds: f64,
}

impl<B: TrainingBackend, M: Trainable<B>> Trainer<B, M> {
    /// A trainer of a built `method`: AdamW of the config and the seeded task order
    /// ([`crate::TrainerBuilder::build`] has checked everything).
    pub(crate) fn assemble(
        config: TrainConfig,
        student: M,
        tokenizer: ChatTokenizer,
        method: Box<dyn Method<B, M>>,
        environment: Box<dyn Environment>,
        tasks: Vec<Task>,
        replica: Option<Replica<B::InnerBackend>>,
    ) -> Self {
        let o = &config.optimizer;
        let optimizer = FusedAdamW::new(
            o.beta1 as f32,
            o.beta2 as f32,
            o.epsilon as f32,
            o.weight_decay as f32,
        )
        .init();
        let order = TaskOrder::new(tasks.len(), config.seed);
        Self {
            config,
            student: Some(student),
            tokenizer,
            optimizer,
            method,
            environment,
            tasks,
            order,
            step: 0,
            collapse: CollapseState::default(),
            spent: TokensSpent::default(),
            skipped_in_a_row: 0,
            replica,
            exchange_seconds: 0.0,
        }
    }

    /// A trainer without a teacher model or template of its own: every method but OPD.
    pub fn new(
        config: TrainConfig,
        student: M,
        tokenizer: ChatTokenizer,
        tasks: Vec<Task>,
        environment: impl Environment + 'static,
    ) -> Result<Self> {
        Self::builder(config, student, tokenizer, tasks, environment).build()
    }

    /// The student as it is now.
    pub fn student(&self) -> &M {
        self.student
            .as_ref()
            .expect("the student is only out during an optimizer step")
    }

    /// The trained student.
    pub fn into_student(self) -> M {
        self.student
            .expect("the student is only out during an optimizer step")
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Tokens generated and trained on over all steps taken (resumed runs included).
    pub fn tokens_spent(&self) -> TokensSpent {
        self.spent
    }

    /// The tasks the trainer draws from, in the order it was given them.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// The trainer's whole state, for a checkpoint.
    pub fn state(&self) -> TrainerState<'_, B, M> {
        TrainerState {
            config: &self.config,
            tasks: &self.tasks,
            progress: RunProgress {
                steps_done: self.step,
                tasks_drawn: self.order.drawn(),
                first_response_length: self.collapse.first_length,
                tokens_spent: self.spent,
            },
            student: self.student(),
            optimizer: self.optimizer.to_record(),
            teacher: self.method.teacher_weights(),
        }
    }

    /// Puts back a saved state: the next steps are the ones the saved run would have taken.
    pub fn restore(&mut self, saved: SavedState<B, M>) {
        self.student = Some(saved.student);
        self.optimizer = self.optimizer.clone().load_record(saved.optimizer);
        if let Some(teacher) = saved.teacher {
            self.method.set_teacher_weights(teacher);
        }
        let p = saved.progress;
        self.step = p.steps_done;
        self.order.skip_to(p.tasks_drawn);
        self.collapse.first_length = p.first_response_length;
        self.spent = p.tokens_spent;
    }

    /// Runs until `config.steps`, calling `on_step` with each step's metrics.
    pub fn train(&mut self, mut on_step: impl FnMut(&StepMetrics)) -> Result<()> {
        self.train_with(|_, metrics| {
            on_step(&metrics);
            Ok::<_, TrainError>(Flow::Continue)
        })
    }

    /// Runs until `config.steps` or until `after_step` says [`Flow::Stop`]; `after_step` sees
    /// the trainer after each step (to evaluate, checkpoint or count a budget) and the step's
    /// metrics.
    pub fn train_with<E: From<TrainError>>(
        &mut self,
        mut after_step: impl FnMut(&Self, StepMetrics) -> std::result::Result<Flow, E>,
    ) -> std::result::Result<(), E> {
        self.check_replicas(true)?;
        while self.step < self.config.steps {
            let metrics = self.step()?;
            let flow = after_step(self, metrics);
            let stop = !matches!(flow, Ok(Flow::Continue));
            // Every worker stops where any one (the one that writes the run folder) says so.
            let stop = match &mut self.replica {
                Some(replica) => replica.any(stop, "flow").map_err(TrainError::from)?,
                None => stop,
            };
            flow?;
            if stop {
                break;
            }
            if self.step.is_multiple_of(CHECK_EVERY) {
                self.check_replicas(false)?;
            }
        }
        self.check_replicas(false)?;
        Ok(())
    }

    /// In a data-parallel run: every worker holds the same step, weights and optimizer state
    /// (and, at the `first` check, config and tasks): a fingerprint of each; else [`crate::parallel::ParallelError::Disagree`].
    fn check_replicas(&mut self, first: bool) -> Result<()> {
        let Some(replica) = &mut self.replica else {
            return Ok(());
        };
        // The config and tasks are fixed for a trainer's life: compared once, before any step.
        if first {
            let run = format!(
                "{}\n{}",
                serde_json::to_string(&self.config).unwrap_or_default(),
                crate::fingerprint::tasks_fingerprint(&self.tasks)
            );
            replica.agree(
                u64::from(crc32fast::hash(run.as_bytes())),
                "config and tasks",
            )?;
        }
        replica.agree(self.step as u64, "steps taken")?;
        let student = self.student.as_ref().expect("the student is in");
        replica.agree(fingerprint::weights(student), "weights")?;
        let optimizer = fingerprint::optimizer(student, &self.optimizer);
        replica.agree(optimizer, "optimizer state")?;
        Ok(())
    }

    /// Leaves the data-parallel group once training is over (every worker calls it; a
    /// failure to say goodbye is only logged: the run is over); nothing for a trainer of its
    /// own. A trainer that left trains alone.
    pub fn leave_group(&mut self) {
        if let Some(replica) = self.replica.take()
            && let Err(e) = replica.finish()
        {
            tracing::warn!("leaving the data-parallel group: {e}");
        }
    }

    /// This worker's rank in a data-parallel run (0 for a trainer of its own).
    pub fn rank(&self) -> usize {
        self.replica.as_ref().map_or(0, Replica::rank)
    }

    /// One step of the recipe; returns its metrics.
    pub fn step(&mut self) -> Result<StepMetrics> {
        // 1. Prompts, from a copy of the order: a step that fails before its first update
        // (a teacher that cannot be reached) leaves the trainer as it was.
        let mut order = self.order.clone();
        let picked = order.take(self.config.prompts_per_step);
        // 2. Rollouts: the current weights on the inner backend, a fresh seed each step.
        let clock = Instant::now();
        self.exchange_seconds = 0.0;
        let rollouts = self.method.rollouts();
        let rows = match &self.replica {
            // Each worker samples its share of the prompts (whole groups); all see all rows.
            Some(replica) => {
                let own = self.rollouts(rollouts, &picked[replica.share(picked.len())])?;
                let at = Instant::now();
                let all = self.replica_mut().gather(&own, "rows")?;
                self.exchange_seconds += at.elapsed().as_secs_f64();
                let per_prompt = match rollouts {
                    Rollouts::References => 1,
                    Rollouts::Sampled { group } => group,
                };
                let (n, workers) = (picked.len(), all.len());
                let vocab = opd_policy::Policy::vocab_size(self.student());
                for (r, part) in all.iter().enumerate() {
                    let share = &picked[r * n / workers..(r + 1) * n / workers];
                    part.check_share(share, per_prompt, vocab)
                        .map_err(|detail| crate::parallel::ParallelError::Disagree {
                            what: "rows",
                            detail: format!("worker {r}: {detail}"),
                        })?;
                }
                StepRows::concat(all)
            }
            None => self.rollouts(rollouts, &picked)?,
        };
        let rollout_seconds = clock.elapsed().as_secs_f64();
        // 3. Advantages from the rewards.
        let rewards: Vec<f64> = rows.outcomes.iter().map(|o| o.reward).collect();
        let advantages = self.method.sequence_advantages(&rewards);
        // 4. Targets of every micro-batch, before any update.
        let clock = Instant::now();
        let sizes = Sizes {
            micro_batch: self.config.micro_batch,
            chunk: self.config.chunk_size,
            output_head: self.config.output_head,
        };
        let minis = prepare(
            &*self.method,
            self.student(),
            &rows,
            &self.tasks,
            advantages.as_ref().map_or(&[], |a| &a.values),
            RowSplit {
                mini_batches: self.config.mini_batches,
                rank: self.rank(),
                workers: self.replica.as_ref().map_or(1, Replica::workers),
            },
            sizes,
        )?;
        let teacher_seconds = clock.elapsed().as_secs_f64();
        // 5. Loss, backward and an optimizer step per mini-batch; the teacher follows.
        let mut telemetry = Telemetry::default();
        telemetry.rows_without_privilege = minis
            .iter()
            .flatten()
            .map(|m| m.prepared.rows_without_privilege)
            .sum();
        let sampled = rollouts != Rollouts::References;
        let (mut train_seconds, mut optimizer_seconds) = (0.0, 0.0);
        for (u, mini) in minis.iter().enumerate() {
            let settings = LossSettings {
                chunk: self.config.chunk_size,
                sampled,
                diagnose: (u == 0).then_some(self.config.diagnostics_top_k),
            };
            let (train, optimizer) = self.update(mini, u, settings, &mut telemetry)?;
            train_seconds += train;
            optimizer_seconds += optimizer;
        }
        self.order = order;
        // 6. Metrics (every worker's share of them), and the watches.
        if let Some(replica) = &mut self.replica {
            let at = Instant::now();
            let shares = replica.gather(&telemetry, "telemetry")?;
            self.exchange_seconds += at.elapsed().as_secs_f64();
            let mut merged = telemetry.update_level();
            for share in &shares {
                merged.absorb(share);
            }
            telemetry = merged;
        }
        let collapse = watch_collapse(
            &mut self.collapse,
            &self.config.collapse,
            sampled,
            telemetry.entropy(),
            &rows,
        );
        for warning in &collapse {
            tracing::warn!("step {}: {warning}", self.step);
        }
        if self.config.collapse.stop && !collapse.is_empty() {
            return Err(TrainError::Collapse {
                step: self.step,
                reason: collapse.join("; "),
            });
        }
        let metrics = telemetry.into_metrics(Step {
            index: self.step,
            rows: &rows,
            sampled,
            advantages: advantages.as_ref(),
            learning_rate: self.learning_rate(0),
            seconds: [
                rollout_seconds,
                teacher_seconds,
                train_seconds,
                optimizer_seconds,
            ],
            collapse,
            teacher_names: self.method.teacher_names(),
        });
        let mut metrics = metrics;
        metrics.exchange_seconds = self.exchange_seconds;
        self.finish_step(&metrics, minis.len())?;
        Ok(metrics)
    }

    /// The learning rate of update `u` of this step.
    fn learning_rate(&self, u: usize) -> f64 {
        let per_step = self.config.mini_batches;
        learning_rate(
            &self.config.optimizer,
            self.step * per_step + u,
            self.config.steps * per_step,
        )
    }

    /// The step's rows: the student's samples or the references.
    fn rollouts(&self, rollouts: Rollouts, picked: &[usize]) -> Result<rows::StepRows> {
        let tasks: Vec<(usize, &Task)> = picked.iter().map(|&i| (i, &self.tasks[i])).collect();
        match rollouts {
            Rollouts::References => rows::references(&self.tokenizer, &tasks, &*self.environment),
            Rollouts::Sampled { group } => rows::sampled(
                &self.student().valid(),
                &self.tokenizer,
                &tasks,
                &self.config.sampling,
                group,
                self.config.seed.wrapping_add(self.step as u64),
                &*self.environment,
            ),
        }
    }

    /// Counts the step, and stops a run whose updates have all been skipped for
    /// [`MAX_SKIPPED_STEPS_IN_A_ROW`] steps.
    fn finish_step(&mut self, metrics: &StepMetrics, updates: usize) -> Result<()> {
        self.step += 1;
        self.spent.generated += metrics.generated_tokens as u64;
        self.spent.trained += metrics.trained_tokens as u64;
        let all_skipped = metrics.skipped_updates > 0 && metrics.skipped_updates == updates;
        self.skipped_in_a_row = if all_skipped {
            self.skipped_in_a_row + 1
        } else {
            0
        };
        if self.skipped_in_a_row >= MAX_SKIPPED_STEPS_IN_A_ROW {
            return Err(TrainError::NonFiniteRun {
                steps: self.skipped_in_a_row,
                last_step: self.step - 1,
                warning: metrics.warnings.last().cloned().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// The gradients of mini-batch `index`, clipped, and an optimizer step; returns the
    /// seconds of forward + backward and of the optimizer. A non-finite loss or gradient norm
    /// stops the run or skips the update, as configured.
    fn update(
        &mut self,
        mini: &[Micro<B>],
        index: usize,
        settings: LossSettings,
        telemetry: &mut Telemetry,
    ) -> Result<(f64, f64)> {
        let norm = self.global_counts(counts(mini))?;
        if norm.tokens == 0 {
            return Ok((0.0, 0.0));
        }
        telemetry.updates += 1;
        let clock = Instant::now();
        let outcome = gradients(self.student(), mini, norm, settings, telemetry)?;
        let outcome = self.shared(outcome)?;
        let train_seconds = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let (grads, loss) = match outcome {
            Gradients::Finite { grads, loss } => (grads, loss),
            Gradients::NonFinite { micro_batch, value } => {
                return self.non_finite(micro_batch, "loss", value, telemetry, train_seconds);
            }
        };
        if grads.is_empty() {
            return Err(TrainError::NothingToTrain);
        }
        let Some(grads) = self.clipped(grads, telemetry) else {
            let norm = telemetry.grad_norm;
            return self.non_finite(
                mini.len() - 1,
                "gradient norm",
                norm,
                telemetry,
                train_seconds,
            );
        };
        telemetry.add_update_loss(loss);
        let lr = self.learning_rate(index);
        let student = self.student.take().expect("the student is in");
        let student = self.optimizer.step(lr, student, grads);
        let after = self.method.after_update(&student);
        self.student = Some(student);
        after?;
        Ok((train_seconds, clock.elapsed().as_secs_f64()))
    }

    /// This worker's replica (only called in a data-parallel run).
    fn replica_mut(&mut self) -> &mut Replica<B::InnerBackend> {
        self.replica.as_mut().expect("a data-parallel run")
    }

    /// The mini-batch's counts over every worker's part: `Σ_w N_w`.
    fn global_counts(&mut self, own: Counts) -> Result<Counts> {
        let Some(replica) = &mut self.replica else {
            return Ok(own);
        };
        let at = Instant::now();
        let all = replica.gather(&(own.tokens, own.sequences), "token counts")?;
        self.exchange_seconds += at.elapsed().as_secs_f64();
        Ok(Counts {
            tokens: all.iter().map(|c| c.0).sum(),
            sequences: all.iter().map(|c| c.1).sum(),
        })
    }

    /// This worker's gradients summed with every other worker's: the loss summed, and a
    /// non-finite loss on any worker (the lowest rank's) a non-finite update on all.
    fn shared(&mut self, own: Gradients) -> Result<Gradients> {
        if self.replica.is_none() {
            return Ok(own);
        }
        let at = Instant::now();
        let verdict = match &own {
            Gradients::Finite { loss, .. } => (*loss, None),
            Gradients::NonFinite { micro_batch, value } => (f64::NAN, Some((*micro_batch, *value))),
        };
        let all = self.replica_mut().gather(&verdict, "losses")?;
        let outcome = match (own, all.iter().find_map(|(_, bad)| *bad)) {
            (_, Some((micro_batch, value))) => Gradients::NonFinite { micro_batch, value },
            (own @ Gradients::NonFinite { .. }, None) => own,
            (Gradients::Finite { grads, .. }, None) => {
                let student = self.student.as_ref().expect("the student is in");
                let replica = self.replica.as_mut().expect("a data-parallel run");
                Gradients::Finite {
                    grads: grads::all_reduce(student, grads, replica)?,
                    loss: all.iter().map(|(loss, _)| loss).sum(),
                }
            }
        };
        self.exchange_seconds += at.elapsed().as_secs_f64();
        Ok(outcome)
    }

    /// The gradients clipped to `max_grad_norm`; `None` when their norm is not finite.
    fn clipped(
        &self,
        mut grads: GradientsParams,
        telemetry: &mut Telemetry,
    ) -> Option<GradientsParams> {
        let student = self.student();
        let norm = grads::global_norm(student, &grads);
        telemetry.grad_norm = norm;
        if !norm.is_finite() {
            return None;
        }
        if let Some(max) = self.config.optimizer.max_grad_norm
            && norm > max
        {
            grads::scale(student, &mut grads, max / (norm + 1e-6));
        }
        Some(grads)
    }

    /// A non-finite `what`: an error, or (skip) a warning and no update.
    fn non_finite(
        &self,
        micro_batch: usize,
        what: &'static str,
        value: f64,
        telemetry: &mut Telemetry,
        train_seconds: f64,
    ) -> Result<(f64, f64)> {
        let error = TrainError::NonFinite {
            step: self.step,
            micro_batch,
            what,
            value,
        };
        match self.config.on_non_finite {
            OnNonFinite::Stop => Err(error),
            OnNonFinite::Skip => {
                tracing::warn!("{error}; the update is skipped");
                telemetry
                    .warnings
                    .push(format!("{error}; the update is skipped"));
                telemetry.skipped += 1;
                Ok((train_seconds, 0.0))
            }
        }
    }
}
