//! The training loop every method composes. One [`Trainer::step`] reads top to bottom:
//! prompts → student rollouts → rewards and feedback → advantages and teacher outputs →
//! loss → optimizer step(s) → teacher update → metrics.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, ElementConversion, Tensor, TensorData};
use opd_divergences::sampled::{Estimator, sequence_log_probs};
use opd_divergences::{
    DistillationLoss, Divergence, DivergenceBackend, DivergenceOptions, Support,
};
use opd_policy::{ChatTokenizer, Llama, Policy, SequenceBatch};
use opd_teachers::privileged::sdpo_demonstrations;
use opd_teachers::{
    Conditioned, Current, Ema, EmaRate, FrozenInitial, Privileged, PrivilegedTemplate, Request,
    Support as TeacherSupport, Teacher, TeacherOutput, TrustRegion,
};

use crate::config::{
    Aggregation, DistillForm, Objective, OnNonFinite, OpdForm, TeacherWeights, TrainConfig,
};
use crate::diagnostics::{self, CollapseState, Overlap, TopSets, host};
use crate::environment::{Environment, Task};
use crate::error::{Result, TrainError};
use crate::grads;
use crate::metrics::{Running, StepMetrics};
use crate::objectives::{Normalizer, aggregate, distill, grpo, importance_ratio, opd, sft};
use crate::order::TaskOrder;
use crate::rows::{self, Rows};
use crate::schedule::learning_rate;

/// Where the teacher's outputs come from.
enum TeacherSlot<B: AutodiffBackend> {
    /// SFT and GRPO: none.
    None,
    /// OPD: a model scoring the student's own contexts.
    Model(Box<dyn Teacher<B>>),
    /// OPSD, SDFT, SDPO: the student's weights reading privileged contexts.
    Conditioned(Box<Conditioned<Box<dyn Teacher<B>>>>),
}

/// One micro-batch, with everything fixed before the step's first update.
struct Micro<B: AutodiffBackend> {
    batch: SequenceBatch,
    response_mask: Tensor<B, 2, Bool>,
    loss_mask: Tensor<B, 2, Bool>,
    loss_mask_host: Vec<bool>,
    /// Counted tokens, and rows with at least one.
    tokens: usize,
    sequences: usize,
    old: Tensor<B, 2>,
    old_host: Vec<f32>,
    /// Per-token advantages and their host copy.
    advantages: Option<(Tensor<B, 2>, Vec<f32>)>,
    teacher: Option<TeacherOutput<B>>,
    reference: Option<Tensor<B, 2>>,
}

impl<B: AutodiffBackend> Micro<B> {
    fn teacher_tokens(&self, temperature: f64) -> Result<Tensor<B, 2>> {
        let output = self.teacher.clone().expect("a teacher output");
        Ok(output.into_token_log_probs(temperature)?)
    }
}

/// What a step accumulates for its metrics.
#[derive(Default)]
struct StepStats {
    entropy: Running,
    teacher_entropy: Running,
    divergence: Running,
    ratio: Running,
    clip_low: usize,
    clip_high: usize,
    clip_tokens: usize,
    overlap: Overlap,
    losses: Running,
    parts: std::collections::BTreeMap<String, f64>,
    grad_norm: f64,
    updates: usize,
    trained_tokens: usize,
    skipped: usize,
    warnings: Vec<String>,
}

/// Trains a student with one of the objectives of [`Objective`] on a list of tasks graded by
/// an [`Environment`].
pub struct Trainer<B: AutodiffBackend + DivergenceBackend> {
    pub(crate) config: TrainConfig,
    pub(crate) student: Option<Llama<B>>,
    tokenizer: ChatTokenizer,
    pub(crate) optimizer: OptimizerAdaptor<AdamW, Llama<B>, B>,
    teacher: TeacherSlot<B>,
    reference: Option<FrozenInitial<B>>,
    environment: Box<dyn Environment>,
    tasks: Vec<Task>,
    pub(crate) order: TaskOrder,
    pub(crate) step: usize,
    pub(crate) collapse: CollapseState,
    pub(crate) spent: TokensSpent,
    /// Steps in a row whose every update was skipped as non-finite.
    skipped_in_a_row: usize,
}

/// Steps in a row whose every update is skipped as non-finite before the run stops with
/// [`TrainError::NonFiniteRun`]: past this, the weights no longer move and the run only
/// spends time.
pub const MAX_SKIPPED_STEPS_IN_A_ROW: usize = 5;

/// Tokens a run has spent since its first step (kept in checkpoints, so a resumed run's
/// budget goes on from where it stopped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokensSpent {
    /// Tokens the student sampled in rollouts: `Σ_steps` [`StepMetrics::generated_tokens`].
    pub generated: u64,
    /// Tokens the loss was computed on: `Σ_steps` [`StepMetrics::trained_tokens`].
    pub trained: u64,
}

fn self_teacher<B: AutodiffBackend>(
    weights: TeacherWeights,
    student: &Llama<B>,
) -> Result<Box<dyn Teacher<B>>> {
    Ok(match weights {
        TeacherWeights::FrozenInitial => Box::new(FrozenInitial::new(student)),
        TeacherWeights::Current => Box::new(Current),
        TeacherWeights::Ema(eta) => Box::new(Ema::new(student, EmaRate::new(eta)?)),
        TeacherWeights::TrustRegion(alpha) => Box::new(TrustRegion::new(student, alpha)?),
    })
}

pub(crate) fn device_of<B: AutodiffBackend>(model: &Llama<B>) -> B::Device {
    burn::module::Module::devices(model)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Rows `[m, width]` of per-row host vectors, zero-padded.
fn padded<B: AutodiffBackend>(
    values: &[&[f32]],
    width: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Vec<f32>) {
    let mut flat = vec![0.0f32; values.len() * width];
    for (row, v) in values.iter().enumerate() {
        flat[row * width..row * width + v.len()].copy_from_slice(v);
    }
    let tensor = Tensor::from_data(TensorData::new(flat.clone(), [values.len(), width]), device);
    (tensor, flat)
}

impl<B: AutodiffBackend + DivergenceBackend> Trainer<B> {
    /// A trainer of `student` (its trainable parameters: all, or only LoRA adapters) on
    /// `tasks`. Self-distillation objectives build their teacher from the student here; OPD
    /// needs one from [`Trainer::with_teacher`].
    pub fn new(
        config: TrainConfig,
        student: Llama<B>,
        tokenizer: ChatTokenizer,
        tasks: Vec<Task>,
        environment: impl Environment + 'static,
    ) -> Result<Self> {
        config.validate()?;
        if tasks.is_empty() {
            return Err(TrainError::Config {
                field: "tasks",
                value: "0 tasks".into(),
                expected: "at least one task",
            });
        }
        let needs_reference = matches!(
            config.objective,
            Objective::Sft(_) | Objective::Opsd(_) | Objective::Sdft(_)
        );
        if needs_reference && let Some(index) = tasks.iter().position(|t| t.reference.is_none()) {
            return Err(TrainError::Task {
                index,
                problem: format!(
                    "{} needs a reference solution or demonstration",
                    config.objective.name()
                ),
            });
        }
        let conditioned = |weights| -> Result<TeacherSlot<B>> {
            Ok(TeacherSlot::Conditioned(Box::new(Conditioned {
                teacher: self_teacher(weights, &student)?,
                template: PrivilegedTemplate::default(),
                tokenizer: tokenizer.clone(),
            })))
        };
        let teacher = match &config.objective {
            Objective::Opsd(c) => conditioned(c.teacher)?,
            Objective::Sdft(c) => conditioned(c.teacher)?,
            Objective::Sdpo(c) => conditioned(c.teacher)?,
            _ => TeacherSlot::None,
        };
        let reference = match &config.objective {
            Objective::Grpo(c) if c.kl_beta > 0.0 => Some(FrozenInitial::new(&student)),
            _ => None,
        };
        let o = &config.optimizer;
        let optimizer = AdamWConfig::new()
            .with_beta_1(o.beta1 as f32)
            .with_beta_2(o.beta2 as f32)
            .with_epsilon(o.epsilon as f32)
            .with_weight_decay(o.weight_decay as f32)
            .init();
        let order = TaskOrder::new(tasks.len(), config.seed);
        Ok(Self {
            config,
            student: Some(student),
            tokenizer,
            optimizer,
            teacher,
            reference,
            environment: Box::new(environment),
            tasks,
            order,
            step: 0,
            collapse: CollapseState::default(),
            spent: TokensSpent::default(),
            skipped_in_a_row: 0,
        })
    }

    /// Sets the teacher's weights: OPD's teacher model (an [`opd_teachers::External`] model,
    /// or any strategy); for OPSD, SDFT and SDPO, the model that reads the privileged context in
    /// place of the student's own weights. SFT and GRPO have no teacher and ignore it.
    pub fn with_teacher(mut self, teacher: impl Teacher<B> + 'static) -> Self {
        match &mut self.teacher {
            TeacherSlot::Conditioned(conditioned) => conditioned.teacher = Box::new(teacher),
            TeacherSlot::Model(_) | TeacherSlot::None => {
                if let Objective::Opd(_) = self.config.objective {
                    self.teacher = TeacherSlot::Model(Box::new(teacher));
                }
            }
        }
        self
    }

    /// Replaces the wording of the self-teacher's privileged prompt.
    pub fn with_template(mut self, template: PrivilegedTemplate) -> Self {
        if let TeacherSlot::Conditioned(c) = &mut self.teacher {
            c.template = template;
        }
        self
    }

    /// The weights a teacher moved on its own (the EMA's), which checkpoints keep.
    pub(crate) fn teacher_weights(&self) -> Option<&opd_teachers::InnerLlama<B>> {
        match &self.teacher {
            TeacherSlot::None => None,
            TeacherSlot::Model(t) => t.moving_weights(),
            TeacherSlot::Conditioned(c) => c.teacher.moving_weights(),
        }
    }

    /// Puts back weights saved from [`Self::teacher_weights`].
    pub(crate) fn set_teacher_weights(&mut self, weights: opd_teachers::InnerLlama<B>) {
        match &mut self.teacher {
            TeacherSlot::None => {}
            TeacherSlot::Model(t) => t.set_moving_weights(weights),
            TeacherSlot::Conditioned(c) => c.teacher.set_moving_weights(weights),
        }
    }

    /// The student as it is now.
    pub fn student(&self) -> &Llama<B> {
        self.student
            .as_ref()
            .expect("the student is only out during an update")
    }

    /// The trained student.
    pub fn into_student(self) -> Llama<B> {
        self.student
            .expect("the student is only out during an update")
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

    /// Runs `config.steps` steps, calling `on_step` with each step's metrics.
    pub fn train(&mut self, mut on_step: impl FnMut(&StepMetrics)) -> Result<()> {
        while self.step < self.config.steps {
            let metrics = self.step()?;
            on_step(&metrics);
        }
        Ok(())
    }

    /// One step of the recipe; returns its metrics.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let mut stats = StepStats::default();
        // 1. Prompts.
        let picked = self.order.take(self.config.prompts_per_step);
        // 2. Rollouts: the current weights on the inner backend, a fresh seed each step.
        let clock = Instant::now();
        let rows = self.rollouts(&picked)?;
        let rollout_seconds = clock.elapsed().as_secs_f64();
        // 3. Rewards and feedback came with the rows; 4. advantages and privileged contexts.
        let (advantages, zero_std) = self.sequence_advantages(&rows);
        let privileged = self.privileged(&rows)?;
        // 5. Teacher outputs and π_ref, for every micro-batch, before any update.
        let clock = Instant::now();
        let (minis, without_privilege) =
            self.prepare(&rows, advantages.as_deref(), privileged.as_deref())?;
        let teacher_seconds = clock.elapsed().as_secs_f64();
        // 6. Loss, backward and an optimizer step per mini-batch; 7. the teacher follows.
        let (mut train_seconds, mut optimizer_seconds) = (0.0, 0.0);
        let first_lr = learning_rate(
            &self.config.optimizer,
            self.step * self.config.mini_batches,
            self.config.steps * self.config.mini_batches,
        );
        for (u, mini) in minis.iter().enumerate() {
            let lr = learning_rate(
                &self.config.optimizer,
                self.step * self.config.mini_batches + u,
                self.config.steps * self.config.mini_batches,
            );
            let (train, optimizer) = self.update(mini, u, lr, &mut stats)?;
            train_seconds += train;
            optimizer_seconds += optimizer;
        }
        // 8. Metrics.
        let metrics = self.metrics(
            &rows,
            zero_std,
            without_privilege,
            first_lr,
            stats,
            [
                rollout_seconds,
                teacher_seconds,
                train_seconds,
                optimizer_seconds,
            ],
        )?;
        self.step += 1;
        self.spent.generated += metrics.generated_tokens as u64;
        self.spent.trained += metrics.trained_tokens as u64;
        let all_skipped = metrics.skipped_updates > 0 && metrics.skipped_updates == minis.len();
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
        Ok(metrics)
    }

    fn rollouts(&self, picked: &[usize]) -> Result<Rows> {
        let tasks: Vec<(usize, &Task)> = picked.iter().map(|&i| (i, &self.tasks[i])).collect();
        match self.config.objective {
            Objective::Sft(_) => rows::references(&self.tokenizer, &tasks, &*self.environment),
            _ => rows::sampled(
                &self.student().valid(),
                &self.tokenizer,
                &tasks,
                &self.config.sampling,
                self.config.objective.group_size(),
                self.config.seed.wrapping_add(self.step as u64),
                &*self.environment,
            ),
        }
    }

    /// Per-row advantages from the rewards: GRPO's (and SDPO's blend) group-normalized ones,
    /// OPD's batch-centered task reward; with the number of zero-std groups.
    fn sequence_advantages(&self, rows: &Rows) -> (Option<Vec<f64>>, Option<(usize, usize)>) {
        let rewards: Vec<f64> = rows.outcomes.iter().map(|o| o.reward).collect();
        let grouped = |group, scale| {
            let a = grpo::group_advantages(&rewards, group, scale);
            (Some(a.advantages), Some((a.zero_std_groups, a.groups)))
        };
        match &self.config.objective {
            Objective::Grpo(c) => grouped(c.group_size, c.scale_rewards),
            Objective::Sdpo(c) if c.blend_weight.is_some() => grouped(c.group_size, true),
            Objective::Opd(c) if c.form == OpdForm::Advantage && c.reward_weight != 0.0 => {
                let mean = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
                let centered = rewards
                    .iter()
                    .map(|r| c.reward_weight * (r - mean))
                    .collect();
                (Some(centered), None)
            }
            _ => (None, None),
        }
    }

    /// What the self-teacher reads besides the question, per row.
    fn privileged(&self, rows: &Rows) -> Result<Option<Vec<Privileged>>> {
        let reference = |r: usize| {
            self.tasks[rows.tasks[r]]
                .reference
                .clone()
                .unwrap_or_default()
        };
        Ok(match &self.config.objective {
            Objective::Opsd(_) => Some(
                (0..rows.tasks.len())
                    .map(|r| Privileged::Reference(reference(r)))
                    .collect(),
            ),
            Objective::Sdft(_) => Some(
                (0..rows.tasks.len())
                    .map(|r| Privileged::Demonstration(reference(r)))
                    .collect(),
            ),
            Objective::Sdpo(c) => {
                let rewards: Vec<f64> = rows.outcomes.iter().map(|o| o.reward).collect();
                let demos = sdpo_demonstrations(&rewards, c.group_size, c.success_reward);
                Some(
                    demos
                        .iter()
                        .zip(&rows.outcomes)
                        .map(|(demo, outcome)| Privileged::Sdpo {
                            demonstration: demo.map(|j| rows.texts[j].clone()),
                            feedback: outcome.feedback.clone(),
                        })
                        .collect(),
                )
            }
            _ => None,
        })
    }

    /// Splits the rows with a response into mini-batches of micro-batches and computes their
    /// teacher outputs; returns them and the number of rows without privileged information.
    fn prepare(
        &self,
        rows: &Rows,
        advantages: Option<&[f64]>,
        privileged: Option<&[Privileged]>,
    ) -> Result<(Vec<Vec<Micro<B>>>, usize)> {
        let kept: Vec<usize> = (0..rows.responses.len())
            .filter(|&r| !rows.responses[r].is_empty())
            .collect();
        let n = self.config.mini_batches.min(kept.len());
        let mut minis = Vec::with_capacity(n);
        let mut without = 0;
        for u in 0..n {
            let slice = &kept[u * kept.len() / n..(u + 1) * kept.len() / n];
            let mut micros = Vec::new();
            for chunk in slice.chunks(self.config.micro_batch) {
                let (micro, missing) = self.micro(rows, chunk, advantages, privileged)?;
                without += missing;
                micros.push(micro);
            }
            minis.push(micros);
        }
        Ok((minis, without))
    }

    fn request(&self, support: TeacherSupport, temperature: f64) -> Result<Request> {
        let mut request = Request::new(support, temperature)?;
        request.micro_batch = self.config.micro_batch;
        Ok(request)
    }

    fn micro(
        &self,
        rows: &Rows,
        chunk: &[usize],
        advantages: Option<&[f64]>,
        privileged: Option<&[Privileged]>,
    ) -> Result<(Micro<B>, usize)> {
        let student = self.student();
        let device = device_of(student);
        let batch = SequenceBatch::new(
            chunk.iter().map(|&r| rows.contexts[r].clone()).collect(),
            chunk.iter().map(|&r| rows.responses[r].clone()).collect(),
        )?;
        let width = batch.response_width();
        let response_mask = batch.response_mask::<B>(&device);
        let olds: Vec<&[f32]> = chunk.iter().map(|&r| rows.old[r].as_slice()).collect();
        let (old, old_host) = padded::<B>(&olds, width, &device);
        let mut loss_mask = response_mask.clone();
        let mut without = 0;
        let objective = &self.config.objective;
        let teacher = match (&self.teacher, objective) {
            (TeacherSlot::Model(teacher), Objective::Opd(c)) => {
                let support = match (c.form, c.teacher_top_k) {
                    (OpdForm::Divergence, Some(k)) => TeacherSupport::TopK(k),
                    (OpdForm::Divergence, None) => TeacherSupport::Logits,
                    _ => TeacherSupport::SampledToken,
                };
                Some(teacher.outputs(student, &batch, &self.request(support, 1.0)?)?)
            }
            (TeacherSlot::None, Objective::Opd(_)) => {
                return Err(TrainError::Config {
                    field: "teacher",
                    value: "none".into(),
                    expected: "a teacher model for OPD (Trainer::with_teacher)",
                });
            }
            (TeacherSlot::Conditioned(conditioned), _) => {
                let (support, temperature) = match objective {
                    Objective::Opsd(c) => (distill_support(c.form), c.temperature),
                    Objective::Sdft(c) => (distill_support(c.form), c.temperature),
                    Objective::Sdpo(c) => (TeacherSupport::Logits, c.temperature),
                    _ => unreachable!("conditioned teachers serve self-distillation only"),
                };
                let questions: Vec<&str> = chunk
                    .iter()
                    .map(|&r| self.tasks[rows.tasks[r]].prompt.as_str())
                    .collect();
                let privileged: Vec<Privileged> = chunk
                    .iter()
                    .map(|&r| privileged.expect("privileged rows")[r].clone())
                    .collect();
                let out = conditioned.outputs(
                    student,
                    &batch,
                    &questions,
                    &privileged,
                    &self.request(support, temperature)?,
                )?;
                loss_mask = out.mask;
                without = out.rows_without_privilege;
                Some(out.output)
            }
            _ => None,
        };
        let reference = match &self.reference {
            Some(reference) => Some(
                reference
                    .outputs(
                        student,
                        &batch,
                        &self.request(TeacherSupport::SampledToken, 1.0)?,
                    )?
                    .into_token_log_probs(1.0)?,
            ),
            None => None,
        };
        let loss_mask_host = host(loss_mask.clone().int().float());
        let loss_mask_host: Vec<bool> = loss_mask_host.iter().map(|&m| m > 0.5).collect();
        let per_row: Vec<usize> = loss_mask_host
            .chunks(batch.response_width())
            .map(|row| row.iter().filter(|&&m| m).count())
            .collect();
        let mut micro = Micro {
            batch,
            response_mask,
            loss_mask,
            loss_mask_host,
            tokens: per_row.iter().sum(),
            sequences: per_row.iter().filter(|&&n| n > 0).count(),
            old,
            old_host,
            advantages: None,
            teacher,
            reference,
        };
        micro.advantages = self.token_advantages(&micro, chunk, advantages)?;
        Ok((micro, without))
    }

    /// Per-token advantages: a row's sequence advantage on each of its tokens, plus OPD's
    /// discounted distillation advantage in the advantage form.
    fn token_advantages(
        &self,
        micro: &Micro<B>,
        chunk: &[usize],
        sequence: Option<&[f64]>,
    ) -> Result<Option<(Tensor<B, 2>, Vec<f32>)>> {
        let width = micro.batch.response_width();
        let distill = match &self.config.objective {
            Objective::Opd(c) if c.form == OpdForm::Advantage => {
                Some((host(micro.teacher_tokens(1.0)?.inner()), c.discount))
            }
            _ => None,
        };
        if sequence.is_none() && distill.is_none() {
            return Ok(None);
        }
        let mut values = vec![0.0f32; chunk.len() * width];
        for (i, &row) in chunk.iter().enumerate() {
            let len = micro.batch.responses()[i].len();
            let at = i * width;
            let base = sequence.map_or(0.0, |a| a[row]);
            let extra = match &distill {
                Some((teacher, discount)) => opd::advantages(
                    &micro.old_host[at..at + len],
                    &teacher[at..at + len],
                    *discount,
                ),
                None => vec![0.0; len],
            };
            for t in 0..len {
                values[at + t] = (base + extra[t]) as f32;
            }
        }
        let device = micro.old.device();
        let tensor = Tensor::from_data(
            TensorData::new(values.clone(), [chunk.len(), width]),
            &device,
        );
        Ok(Some((tensor, values)))
    }

    /// Accumulates the gradients of one mini-batch and takes an optimizer step; returns the
    /// seconds of forward + backward and of the optimizer.
    fn update(
        &mut self,
        mini: &[Micro<B>],
        index: usize,
        lr: f64,
        stats: &mut StepStats,
    ) -> Result<(f64, f64)> {
        let (tokens, sequences) = mini
            .iter()
            .fold((0, 0), |(t, s), m| (t + m.tokens, s + m.sequences));
        if tokens == 0 {
            return Ok((0.0, 0.0));
        }
        let norm = Normalizer { tokens, sequences };
        stats.updates += 1;
        let student = self
            .student
            .take()
            .expect("student present between updates");
        let clock = Instant::now();
        let mut accumulator = GradientsAccumulator::new();
        let mut total = 0.0;
        let mut failure = None;
        for (m, micro) in mini.iter().enumerate() {
            if micro.tokens == 0 {
                continue;
            }
            let loss = match self.micro_loss(&student, micro, norm, index == 0, stats) {
                Ok(loss) => loss,
                Err(e) => {
                    self.student = Some(student);
                    return Err(e);
                }
            };
            let value = loss.clone().into_scalar().elem::<f64>();
            if !value.is_finite() {
                failure = Some((m, "loss", value));
                break;
            }
            total += value;
            let grads = GradientsParams::from_grads(loss.backward(), &student);
            accumulator.accumulate(&student, grads);
            stats.trained_tokens += micro.tokens;
        }
        let train_seconds = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let mut grads = accumulator.grads();
        if failure.is_none() && grads.is_empty() {
            self.student = Some(student);
            return Err(TrainError::NothingToTrain);
        }
        if failure.is_none() {
            let norm = grads::global_norm(&student, &grads);
            stats.grad_norm = norm;
            if !norm.is_finite() {
                failure = Some((mini.len() - 1, "gradient norm", norm));
            } else if let Some(max) = self.config.optimizer.max_grad_norm
                && norm > max
            {
                grads::scale(&student, &mut grads, max / (norm + 1e-6));
            }
        }
        if let Some((micro_batch, what, value)) = failure {
            self.student = Some(student);
            let error = TrainError::NonFinite {
                step: self.step,
                micro_batch,
                what,
                value,
            };
            return match self.config.on_non_finite {
                OnNonFinite::Stop => Err(error),
                OnNonFinite::Skip => {
                    tracing::warn!("{error}; the update is skipped");
                    stats
                        .warnings
                        .push(format!("{error}; the update is skipped"));
                    stats.skipped += 1;
                    Ok((train_seconds, 0.0))
                }
            };
        }
        stats.losses.add(total);
        let student = self.optimizer.step(lr, student, grads);
        let after = match &mut self.teacher {
            TeacherSlot::Model(teacher) => teacher.after_step(&student),
            TeacherSlot::Conditioned(c) => c.teacher.after_step(&student),
            TeacherSlot::None => Ok(()),
        };
        self.student = Some(student);
        after?;
        Ok((train_seconds, clock.elapsed().as_secs_f64()))
    }

    /// The objective on one micro-batch: its share of the mini-batch loss (with graph).
    fn micro_loss(
        &self,
        student: &Llama<B>,
        micro: &Micro<B>,
        norm: Normalizer,
        diagnose: bool,
        stats: &mut StepStats,
    ) -> Result<Tensor<B, 1>> {
        let chunk = self.config.chunk_size;
        let logits = student.response_logits(&micro.batch)?;
        let device = logits.device();
        let ids = micro.batch.response_ids::<B>(&device);
        let lp = sequence_log_probs(
            logits.clone(),
            ids.clone(),
            micro.response_mask.clone(),
            1.0,
            chunk,
        )?;
        let mask = micro.loss_mask.clone();
        let counted = &micro.loss_mask_host;
        let old = micro.old.clone();
        let ratio = match self.config.objective {
            Objective::Sft(_) => Vec::new(),
            _ => host(importance_ratio(lp.clone(), old.clone()).inner()),
        };
        stats.ratio.add_masked(&ratio, counted);
        if diagnose {
            self.diagnose(logits.clone().inner(), micro, stats);
        }
        let lp_at = |temperature: f64| -> Result<Tensor<B, 2>> {
            if temperature == 1.0 {
                return Ok(lp.clone());
            }
            Ok(sequence_log_probs(
                logits.clone(),
                ids.clone(),
                micro.response_mask.clone(),
                temperature,
                chunk,
            )?)
        };
        let mut aggregation = Aggregation::TokenMean;
        // (name, weighted per-token loss) of each part.
        let mut parts: Vec<(&'static str, Tensor<B, 2>)> = Vec::new();
        let mut divergence: Option<Tensor<B, 2>> = None;
        match &self.config.objective {
            Objective::Sft(_) => parts.push(("nll", sft::nll(lp.clone()))),
            Objective::Grpo(c) => {
                aggregation = c.aggregation;
                let (advantages, host_adv) = micro.advantages.clone().expect("advantages");
                clip_stats(&ratio, &host_adv, counted, c, stats);
                parts.push((
                    "pg",
                    grpo::clipped_surrogate(
                        lp.clone(),
                        old.clone(),
                        advantages,
                        c.epsilon_low,
                        c.epsilon_high,
                    ),
                ));
                if let Some(reference) = &micro.reference {
                    let kl = grpo::k3_to_reference(lp.clone(), reference.clone());
                    divergence = Some(kl.clone());
                    parts.push(("kl", kl.mul_scalar(c.kl_beta)));
                }
            }
            Objective::Opd(c) => match c.form {
                OpdForm::Surrogate => {
                    let teacher = micro.teacher_tokens(1.0)?;
                    divergence = Some(Estimator::K3.estimate(lp.clone().detach(), teacher.clone()));
                    parts.push((
                        "opd",
                        opd::surrogate(lp.clone(), old.clone(), teacher, c.trust_region_beta),
                    ));
                }
                OpdForm::Advantage => {
                    let teacher = micro.teacher_tokens(1.0)?;
                    divergence = Some(Estimator::K3.estimate(lp.clone().detach(), teacher.clone()));
                    let (advantages, _) = micro.advantages.clone().expect("advantages");
                    parts.push((
                        "pg",
                        opd::importance_weighted(lp.clone(), old.clone(), advantages),
                    ));
                }
                OpdForm::Divergence => {
                    let options = DivergenceOptions::new(Divergence::jsd(c.divergence_beta)?)
                        .with_chunk_size(chunk);
                    let values = self.divergence(logits.clone(), micro, options, 1.0)?;
                    divergence = Some(values.clone());
                    parts.push(("distill", values));
                }
            },
            Objective::Opsd(c) => {
                let values = self.self_distill(
                    logits.clone(),
                    micro,
                    Divergence::jsd(c.beta)?,
                    c.form,
                    c.temperature,
                    &lp_at,
                )?;
                divergence = Some(values.clone());
                let values = match c.token_clip {
                    Some(clip) => values.clamp_max(clip),
                    None => values,
                };
                parts.push(("distill", values));
            }
            Objective::Sdft(c) => {
                let values = self.self_distill(
                    logits.clone(),
                    micro,
                    Divergence::ReverseKl,
                    c.form,
                    c.temperature,
                    &lp_at,
                )?;
                divergence = Some(values.clone());
                parts.push(("distill", values));
            }
            Objective::Sdpo(c) => {
                let support = c.top_k.map_or(Support::Full, Support::StudentTopK);
                let options = DivergenceOptions::new(Divergence::jsd(c.alpha)?)
                    .with_support(support)
                    .with_temperature(c.temperature)
                    .with_chunk_size(chunk);
                let values = self.divergence(logits.clone(), micro, options, c.temperature)?;
                divergence = Some(values.clone());
                let weight = distill::clipped_importance_weight(lp.clone(), old.clone(), c.is_clip);
                let distill_loss = values * weight;
                match c.blend_weight {
                    None => parts.push(("distill", distill_loss)),
                    Some(w) => {
                        let (advantages, _) = micro.advantages.clone().expect("advantages");
                        let pg =
                            grpo::clipped_surrogate(lp.clone(), old.clone(), advantages, 0.2, 0.2);
                        parts.push(("pg", pg.mul_scalar(1.0 - w)));
                        parts.push(("distill", distill_loss.mul_scalar(w)));
                    }
                }
            }
        }
        if let Some(values) = divergence {
            stats.divergence.add_masked(&host(values.inner()), counted);
        }
        let mut loss: Option<Tensor<B, 1>> = None;
        for (name, per_token) in parts {
            let part = aggregate(per_token, mask.clone(), aggregation, norm);
            *stats.parts.entry(name.to_string()).or_default() +=
                part.clone().into_scalar().elem::<f64>();
            loss = Some(match loss {
                Some(total) => total + part,
                None => part,
            });
        }
        Ok(loss.expect("every objective has a part"))
    }

    /// A full-logit (or top-k) divergence to the micro-batch's teacher, per token `[m, R]`,
    /// with gradient; zero off the loss mask.
    fn divergence(
        &self,
        logits: Tensor<B, 3>,
        micro: &Micro<B>,
        options: DivergenceOptions,
        temperature: f64,
    ) -> Result<Tensor<B, 2>> {
        let teacher = micro
            .teacher
            .clone()
            .expect("a teacher output")
            .into_divergence_teacher(temperature)?;
        let out = DistillationLoss::new(options.with_temperature(temperature)).forward(
            logits,
            teacher,
            micro.loss_mask.clone(),
        )?;
        Ok(out.per_token)
    }

    fn self_distill(
        &self,
        logits: Tensor<B, 3>,
        micro: &Micro<B>,
        divergence: Divergence,
        form: DistillForm,
        temperature: f64,
        lp_at: &dyn Fn(f64) -> Result<Tensor<B, 2>>,
    ) -> Result<Tensor<B, 2>> {
        match form {
            DistillForm::Full => {
                let options =
                    DivergenceOptions::new(divergence).with_chunk_size(self.config.chunk_size);
                self.divergence(logits, micro, options, temperature)
            }
            DistillForm::SampledToken => {
                let teacher = micro.teacher_tokens(temperature)?;
                Ok(distill::sampled_token(lp_at(temperature)?, teacher))
            }
        }
    }

    /// Entropies and the top-k overlap at the student-visited states of a micro-batch.
    fn diagnose(
        &self,
        logits: Tensor<B::InnerBackend, 3>,
        micro: &Micro<B>,
        stats: &mut StepStats,
    ) {
        let student = diagnostics::log_probs(logits, 1.0);
        stats.entropy.add_masked(
            &diagnostics::entropy(student.clone()),
            &micro.loss_mask_host,
        );
        let k = self.config.diagnostics_top_k;
        let teacher = match &micro.teacher {
            Some(TeacherOutput::Logits {
                logits,
                temperature,
            }) => {
                let teacher = diagnostics::log_probs(logits.clone().inner(), *temperature);
                stats.teacher_entropy.add_masked(
                    &diagnostics::entropy(teacher.clone()),
                    &micro.loss_mask_host,
                );
                (k > 0).then(|| TopSets::of(teacher, k))
            }
            Some(TeacherOutput::TopK { ids, log_probs, .. }) if k > 0 => {
                let k = k.min(ids.dims()[2]);
                Some(TopSets::from_parts(
                    ids.clone().inner().narrow(2, 0, k),
                    log_probs.clone().inner().narrow(2, 0, k),
                ))
            }
            _ => None,
        };
        if let Some(teacher) = teacher {
            let student = TopSets::of(student, teacher.k);
            stats.overlap.add(&student, &teacher, &micro.loss_mask_host);
        }
    }

    fn metrics(
        &mut self,
        rows: &Rows,
        zero_std: Option<(usize, usize)>,
        rows_without_privilege: usize,
        learning_rate: f64,
        stats: StepStats,
        [rollout, teacher, train, optimizer]: [f64; 4],
    ) -> Result<StepMetrics> {
        let n = rows.responses.len().max(1) as f64;
        let lengths: Vec<usize> = rows.responses.iter().map(Vec::len).collect();
        let length_mean = lengths.iter().sum::<usize>() as f64 / n;
        let sft = matches!(self.config.objective, Objective::Sft(_));
        let generated: usize = if sft { 0 } else { lengths.iter().sum() };
        let entropy = stats.entropy.mean().unwrap_or(0.0);
        let mut warnings = stats.warnings;
        // SFT fits fixed references: a low entropy there is the fit, not a collapse.
        let collapse = if sft {
            Vec::new()
        } else {
            self.collapse
                .check(&self.config.collapse, entropy, length_mean)
        };
        for warning in &collapse {
            tracing::warn!("step {}: {warning}", self.step);
        }
        if self.config.collapse.stop && !collapse.is_empty() {
            return Err(TrainError::Collapse {
                step: self.step,
                reason: collapse.join("; "),
            });
        }
        warnings.extend(collapse);
        let per_second = |tokens: usize, seconds: f64| {
            if seconds > 0.0 {
                tokens as f64 / seconds
            } else {
                0.0
            }
        };
        let scored: usize = lengths.iter().sum();
        let clip_fraction =
            |count: usize| (stats.clip_tokens > 0).then(|| count as f64 / stats.clip_tokens as f64);
        let o = stats.overlap;
        let overlap = |sum: f64| (o.positions > 0).then(|| sum / o.positions as f64);
        let updates = stats.updates.max(1) as f64;
        Ok(StepMetrics {
            step: self.step,
            learning_rate,
            loss: stats.losses.mean().unwrap_or(f64::NAN),
            loss_parts: stats
                .parts
                .into_iter()
                .map(|(k, v)| (k, v / updates))
                .collect(),
            divergence_mean: stats.divergence.mean(),
            divergence_max: stats.divergence.max(),
            entropy,
            teacher_entropy: stats.teacher_entropy.mean(),
            response_length_mean: length_mean,
            response_length_max: lengths.iter().copied().max().unwrap_or(0),
            clipped_fraction: rows.truncated.iter().filter(|&&t| t).count() as f64 / n,
            reward_mean: rows.outcomes.iter().map(|o| o.reward).sum::<f64>() / n,
            accuracy: rows.outcomes.iter().filter(|o| o.correct).count() as f64 / n,
            frac_reward_zero_std: zero_std.map(|(z, g)| z as f64 / g.max(1) as f64),
            clip_ratio_low: clip_fraction(stats.clip_low),
            clip_ratio_high: clip_fraction(stats.clip_high),
            ratio_mean: stats.ratio.mean(),
            ratio_min: stats.ratio.min(),
            ratio_max: stats.ratio.max(),
            grad_norm: stats.grad_norm,
            topk_overlap: overlap(o.overlap),
            shared_mass_student: overlap(o.student_mass),
            shared_mass_teacher: overlap(o.teacher_mass),
            rows_without_privilege,
            skipped_updates: stats.skipped,
            generated_tokens: generated,
            trained_tokens: stats.trained_tokens,
            seconds: crate::metrics::Phases {
                rollout,
                teacher,
                train,
                optimizer,
            },
            tokens_per_second: crate::metrics::Phases {
                rollout: per_second(generated, rollout),
                teacher: per_second(scored, teacher),
                train: per_second(stats.trained_tokens, train),
                optimizer: per_second(stats.trained_tokens, optimizer),
            },
            warnings,
        })
    }
}

/// The teacher support a self-distillation form needs.
fn distill_support(form: DistillForm) -> TeacherSupport {
    match form {
        DistillForm::Full => TeacherSupport::Logits,
        DistillForm::SampledToken => TeacherSupport::SampledToken,
    }
}

/// GRPO's clip fractions: `ρ < 1 − ε_low` with `A < 0`, `ρ > 1 + ε_high` with `A > 0`.
fn clip_stats(
    ratio: &[f32],
    advantages: &[f32],
    counted: &[bool],
    c: &crate::config::GrpoConfig,
    stats: &mut StepStats,
) {
    for ((r, a), _) in ratio
        .iter()
        .zip(advantages)
        .zip(counted)
        .filter(|(_, m)| **m)
    {
        let (r, a) = (*r as f64, *a as f64);
        stats.clip_low += usize::from(r < 1.0 - c.epsilon_low && a < 0.0);
        stats.clip_high += usize::from(r > 1.0 + c.epsilon_high && a > 0.0);
        stats.clip_tokens += 1;
    }
}
