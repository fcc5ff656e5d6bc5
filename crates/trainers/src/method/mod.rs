//! The methods, one file each, behind one trait.
//!
//! A step hands a method its stages in order:
//!
//! | stage | the method's part | passes on |
//! |---|---|---|
//! | rollouts | [`Method::rollouts`]: the student's samples, `G` per prompt, or the references | [`Rows`] |
//! | advantages | [`Method::sequence_advantages`] from the rewards | [`SequenceAdvantages`] |
//! | targets | [`Method::targets`] per micro-batch, before any update: teacher outputs, token advantages, `π_ref`, the loss mask | [`Prepared`] holding a [`Targets`] |
//! | loss | [`Targets::loss`] on the student's [`Forward`] | [`Loss`]: named per-token parts |
//! | update | [`Method::after_update`] after each optimizer step (the EMA teacher) | |
//!
//! To add a method: write its config (serde, with `validate`) and a type implementing
//! [`Method`] in a file of this folder, and add one arm to [`crate::Objective`] and to
//! [`build`]. `docs/development.md` walks through an example.

mod grpo;
mod opd;
mod opd_fields;
mod opsd;
mod routing;
mod sdft;
mod sdpo;
mod self_teacher;
mod sft;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Int, Tensor};
use std::cell::{OnceCell, RefCell};

use opd_divergences::sampled::{sequence_log_probs, sequence_log_probs_from_hidden};
use opd_divergences::{DistillationLoss, DivergenceBackend, DivergenceOptions};
use opd_policy::{ChatTokenizer, Llama, SequenceBatch};
use opd_tasks::Task;
use opd_teachers::{
    InnerLlama, PrivilegedTemplate, Request, Teacher, TeacherOutput, TeacherSupport,
};

pub use grpo::GrpoConfig;
pub use opd::{OpdConfig, OpdForm, TrustRegionEstimator};
pub use opsd::{OpsdConfig, SampledTokenBaseline};
pub use sdft::SdftConfig;
pub use sdpo::SdpoConfig;
pub use sft::SftConfig;

use crate::config::{DistillForm, Objective, Reduction};
use crate::diagnosis::Diagnosis;
use crate::error::{Result, TrainError};
use crate::rows::Rows;

/// Where a step's rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollouts {
    /// `group` samples of the student per prompt.
    Sampled {
        /// Answers per prompt `G`.
        group: usize,
    },
    /// Each task's reference answer (SFT): nothing is sampled.
    References,
}

/// Per-row advantages of a step from its rewards, with the groups that carry no signal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SequenceAdvantages {
    /// `A_i` per row, in the rows' prompt-major order.
    pub values: Vec<f64>,
    /// `(groups with all-equal rewards, groups)`, for group-relative advantages.
    pub zero_std: Option<(usize, usize)>,
}

/// What [`Method::targets`] reads: one micro-batch of the step's rows, with the step's
/// rows, tasks and sequence advantages around it.
pub struct MicroBatch<'a, B: AutodiffBackend> {
    /// The rows of the step.
    pub rows: &'a Rows,
    /// The indices of this micro-batch's rows in `rows`.
    pub chunk: &'a [usize],
    /// The trainer's tasks (`rows.tasks` index them).
    pub tasks: &'a [Task],
    /// The step's per-row sequence advantages (empty when the method has none).
    pub advantages: &'a [f64],
    /// The student's contexts and responses of the chunk.
    pub batch: &'a SequenceBatch,
    /// Response positions `[m, R]`.
    pub response_mask: &'a Tensor<B, 2, Bool>,
    /// `log π_old(ŷ_t)` `[m, R]` (zeros for SFT) and its host copy.
    pub old: &'a Tensor<B, 2>,
    /// Host copy of `old`, row-major `[m, R]`.
    pub old_host: &'a [f32],
    /// Rows per teacher forward and positions per chunk of a full-vocabulary loss.
    pub sizes: Sizes,
    /// Whether the loss takes the student's logits from the output head fused with it
    /// (`crate::OutputHead`); a model teacher then answers with its hidden states and head.
    pub fused_head: bool,
}

impl<B: AutodiffBackend + DivergenceBackend> MicroBatch<'_, B> {
    /// The task of the chunk's `i`-th row.
    pub fn task(&self, i: usize) -> &Task {
        &self.tasks[self.rows.tasks[self.chunk[i]]]
    }

    /// A teacher request for `support` at `temperature`, `sizes.micro_batch` rows per forward;
    /// the full support as hidden states and the head when the loss fuses the head.
    pub fn request(&self, support: TeacherSupport, temperature: f64) -> Result<Request> {
        let mut request = Request::new(support, temperature)?;
        request.micro_batch = self.sizes.micro_batch;
        request.hidden_states = self.fused_head;
        Ok(request)
    }

    /// Per-token values `[m, R]` from a per-row function of the row's position in the chunk,
    /// its row index and its response length; zero past each response.
    pub fn per_token(
        &self,
        mut value: impl FnMut(usize, usize, usize) -> Vec<f64>,
    ) -> (Tensor<B, 2>, Vec<f32>) {
        let width = self.batch.response_width();
        let mut flat = vec![0.0f32; self.chunk.len() * width];
        for (i, &row) in self.chunk.iter().enumerate() {
            let len = self.batch.responses()[i].len();
            for (t, v) in value(i, row, len).into_iter().take(len).enumerate() {
                flat[i * width + t] = v as f32;
            }
        }
        let data = burn::tensor::TensorData::new(flat.clone(), [self.chunk.len(), width]);
        (Tensor::from_data(data, &self.old.device()), flat)
    }
}

/// Sizes the methods' constants are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Rows per teacher forward (the trainer's micro-batch).
    pub micro_batch: usize,
    /// Positions per chunk of a full-vocabulary loss.
    pub chunk: usize,
    /// Formed logits or the output head fused with the losses.
    pub output_head: crate::OutputHead,
}

/// A micro-batch's constants, fixed before the step's first update.
pub struct Prepared<B: AutodiffBackend + DivergenceBackend> {
    /// Positions the loss counts: the response mask, less rows a self-teacher had nothing to
    /// show for (SDPO without a demonstration or feedback).
    pub loss_mask: Tensor<B, 2, Bool>,
    /// Rows masked out for lack of privileged information.
    pub rows_without_privilege: usize,
    /// What the loss reads.
    pub targets: Box<dyn Targets<B>>,
}

impl<B: AutodiffBackend + DivergenceBackend> Prepared<B> {
    /// Targets counted on every response position.
    pub fn on_responses(micro: &MicroBatch<'_, B>, targets: impl Targets<B> + 'static) -> Self {
        Self {
            loss_mask: micro.response_mask.clone(),
            rows_without_privilege: 0,
            targets: Box::new(targets),
        }
    }
}

/// The student's side of one micro-batch's loss, with graph.
///
/// The step either forms the response logits `[m, R, V]` up front, or leaves them to the
/// output head fused with each loss (`crate::OutputHead`): the log-probs of the sampled tokens
/// through `opd_divergences::sampled::sequence_log_probs_from_hidden`, the divergences through
/// `DistillationLoss::forward_from_hidden`, the logits formed a block of rows at a time.
pub struct Forward<B: AutodiffBackend + DivergenceBackend> {
    /// Final hidden states at the response positions `[m, R, d]`.
    pub(crate) hidden: Tensor<B, 3>,
    /// The output head `[V, d]` (`logits = hidden · headᵀ`); `None` when the head is not a
    /// plain product, and the logits were formed up front.
    pub(crate) head: Option<Tensor<B, 2>>,
    /// The response logits, once formed.
    pub(crate) logits: OnceCell<Tensor<B, 3>>,
    /// `log π_θ(ŷ_t)` at τ = 1 `[m, R]`.
    pub log_probs: Tensor<B, 2>,
    /// `log π_old(ŷ_t)` `[m, R]` (the sampler's; no gradient).
    pub old: Tensor<B, 2>,
    /// The response ids `[m, R]`.
    pub ids: Tensor<B, 2, Int>,
    /// Response positions.
    pub response_mask: Tensor<B, 2, Bool>,
    /// Positions the loss counts.
    pub loss_mask: Tensor<B, 2, Bool>,
    /// Host copy of the loss mask, row-major `[m, R]`.
    pub counted_host: Vec<bool>,
    /// Host copy of `ρ_t = π_θ(ŷ_t)/π_old(ŷ_t)`, row-major `[m, R]` (empty for SFT).
    pub ratio_host: Vec<f32>,
    /// Positions per chunk of the full-vocabulary computations.
    pub chunk: usize,
    /// The micro-batch's diagnostics, when it is diagnosed: the first divergence with the head
    /// fused shows its blocks of logits to it.
    pub(crate) diagnosis: RefCell<Option<Diagnosis>>,
}

/// `hidden · headᵀ`: `[m, R, d] × [V, d] → [m, R, V]`, as one 2-D product.
pub(crate) fn project<B: burn::tensor::backend::Backend>(
    hidden: Tensor<B, 3>,
    head: Tensor<B, 2>,
) -> Tensor<B, 3> {
    let [m, r, d] = hidden.dims();
    let vocab = head.dims()[0];
    hidden
        .reshape([m * r, d])
        .matmul(head.transpose())
        .reshape([m, r, vocab])
}

impl<B: AutodiffBackend + DivergenceBackend> Forward<B> {
    /// The response logits `[m, R, V]` with graph, formed on first use.
    pub fn logits(&self) -> Tensor<B, 3> {
        self.logits
            .get_or_init(|| {
                let head = self
                    .head
                    .clone()
                    .expect("logits without a head are formed up front");
                project(self.hidden.clone(), head)
            })
            .clone()
    }

    /// `log softmax(z_θ / τ)[ŷ_t]` `[m, R]`, with gradient (τ = 1: [`Self::log_probs`]).
    pub fn log_probs_at(&self, temperature: f64) -> Result<Tensor<B, 2>> {
        if temperature == 1.0 {
            return Ok(self.log_probs.clone());
        }
        match (&self.head, self.logits.get()) {
            (Some(head), None) => Ok(sequence_log_probs_from_hidden(
                self.hidden.clone(),
                head.clone(),
                self.ids.clone(),
                self.response_mask.clone(),
                temperature,
            )?),
            _ => Ok(sequence_log_probs(
                self.logits(),
                self.ids.clone(),
                self.response_mask.clone(),
                temperature,
                self.chunk,
            )?),
        }
    }

    /// A divergence to the teacher's `output` (full logits, hidden states or a top-k) per token
    /// `[m, R]`, with gradient,
    /// at the temperature the teacher scored at; zero off the loss mask.
    pub fn divergence(
        &self,
        output: &TeacherOutput<B>,
        options: DivergenceOptions,
    ) -> Result<Tensor<B, 2>> {
        let temperature = output.temperature();
        let teacher = output.clone().into_target(temperature)?;
        let options = options
            .with_temperature(temperature)
            .with_chunk_size(self.chunk);
        let loss = DistillationLoss::new(options);
        let mask = self.loss_mask.clone();
        let (hidden, mut diagnosis) = (self.hidden.clone(), self.diagnosis.borrow_mut());
        let out = match (&self.head, self.logits.get()) {
            (Some(head), None) => match diagnosis.as_mut().filter(|d| !d.observed) {
                Some(diagnosis) => loss.forward_from_hidden_observed(
                    hidden,
                    head.clone(),
                    teacher,
                    mask,
                    &mut |block| diagnosis.block(block, Some(output), &self.counted_host),
                )?,
                None => loss.forward_from_hidden(hidden, head.clone(), teacher, mask)?,
            },
            _ => loss.forward(self.logits(), teacher, mask)?,
        };
        Ok(out.per_token)
    }
}

/// One micro-batch's loss as the method returns it.
pub struct Loss<B: AutodiffBackend + DivergenceBackend> {
    /// Named per-token parts `[m, R]` (`nll`, `pg`, `kl`, `opd`, `distill`), weighted; their
    /// aggregates add up to the loss.
    pub parts: Vec<(&'static str, Tensor<B, 2>)>,
    /// How the parts become one number.
    pub aggregation: Reduction,
    /// The per-token divergence to the teacher or reference, for the metrics.
    pub divergence: Option<Tensor<B, 2>>,
    /// GRPO's clip counts over the counted tokens.
    pub clipped: Option<Clipped>,
}

impl<B: AutodiffBackend + DivergenceBackend> Loss<B> {
    /// A loss of one part, token mean.
    pub fn single(name: &'static str, per_token: Tensor<B, 2>) -> Self {
        Self {
            parts: vec![(name, per_token)],
            aggregation: Reduction::TokenMean,
            divergence: None,
            clipped: None,
        }
    }
}

/// Tokens where the PPO clip binds: `ρ < 1 − ε_low` with `A < 0`, `ρ > 1 + ε_high` with
/// `A > 0`, of `tokens` counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Clipped {
    /// Below the lower bound.
    pub low: usize,
    /// Above the upper bound.
    pub high: usize,
    /// Tokens looked at.
    pub tokens: usize,
}

/// What a method fixed for one micro-batch, and how it turns the student's forward into the
/// loss.
pub trait Targets<B: AutodiffBackend + DivergenceBackend> {
    /// The loss of the micro-batch on the student's forward, with graph.
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>>;

    /// The teacher's distribution, for the top-k overlap diagnostics (`None` without one).
    fn teacher(&self) -> Option<&TeacherOutput<B>> {
        None
    }

    /// Which teacher scored each row (an index into [`Method::teacher_names`]), when the
    /// method has several; empty otherwise.
    fn teacher_of_rows(&self) -> &[usize] {
        &[]
    }
}

/// A training method: what it samples, what it fixes before the first update and its loss.
/// See the [module](self) docs for the stages.
pub trait Method<B: AutodiffBackend + DivergenceBackend> {
    /// Where the step's rows come from.
    fn rollouts(&self) -> Rollouts;

    /// Why `task` cannot be trained on by this method (a missing reference), or `None`.
    fn check_task(&self, _task: &Task) -> Option<String> {
        None
    }

    /// Per-row advantages from the step's rewards (`rewards[i]` of row `i`); `None` for
    /// methods without them.
    fn sequence_advantages(&self, _rewards: &[f64]) -> Option<SequenceAdvantages> {
        None
    }

    /// The constants of one micro-batch, computed before any update: teacher outputs
    /// (no graph), token advantages, `π_ref`'s log-probs, the loss mask.
    fn targets(&self, student: &Llama<B>, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>>;

    /// Called after each optimizer step (the EMA teacher moves here).
    fn after_update(&mut self, _student: &Llama<B>) -> Result<()> {
        Ok(())
    }

    /// The weights a teacher moved on its own (the EMA's), which checkpoints keep.
    fn teacher_weights(&self) -> Option<&InnerLlama<B>> {
        None
    }

    /// Puts back weights saved from [`Method::teacher_weights`].
    fn set_teacher_weights(&mut self, _weights: InnerLlama<B>) {}

    /// The names of the method's teachers, when it has several (per-teacher metrics).
    fn teacher_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What [`build`] needs besides the objective.
pub struct Parts<'a, B: AutodiffBackend> {
    /// The student at step 0 (self-teachers and `π_ref` copy it).
    pub student: &'a Llama<B>,
    /// The student's tokenizer (self-teachers render their privileged prompts with it).
    pub tokenizer: &'a ChatTokenizer,
    /// OPD's teacher models, named (tasks choose theirs by name; the first is the default);
    /// for self-distillation, at most one: the weights that read the privileged context in
    /// place of the configured self-teacher's.
    pub teachers: Vec<(String, Box<dyn Teacher<B>>)>,
    /// The tasks the trainer draws from (OPD routes each to its teacher).
    pub tasks: &'a [Task],
    /// The wording of the self-teacher's privileged prompt.
    pub template: PrivilegedTemplate,
}

/// The method an objective names; the one place the objective is matched. An error when the
/// method cannot run: OPD without a teacher, a teacher given to SFT or GRPO.
pub fn build<B: AutodiffBackend + DivergenceBackend>(
    objective: &Objective,
    parts: Parts<'_, B>,
) -> Result<Box<dyn Method<B>>> {
    let no_teacher = |parts: &Parts<'_, B>| match parts.teachers.is_empty() {
        false => Err(TrainError::Config {
            field: "teacher",
            value: "a teacher model".into(),
            expected: "none: SFT and GRPO train without a teacher",
        }),
        true => Ok(()),
    };
    Ok(match objective {
        Objective::Sft(_) => {
            no_teacher(&parts)?;
            Box::new(sft::Sft)
        }
        Objective::Grpo(c) => {
            no_teacher(&parts)?;
            Box::new(grpo::Grpo::new(c.clone(), parts.student))
        }
        Objective::Opd(c) => Box::new(opd::Opd::new(c.clone(), parts)?),
        Objective::Opsd(c) => Box::new(opsd::Opsd::new(c.clone(), parts)?),
        Objective::Sdft(c) => Box::new(sdft::Sdft::new(c.clone(), parts)?),
        Objective::Sdpo(c) => Box::new(sdpo::Sdpo::new(c.clone(), parts)?),
    })
}

/// The teacher support a self-distillation form needs.
fn distill_support(form: DistillForm) -> TeacherSupport {
    match form {
        DistillForm::Full => TeacherSupport::Logits,
        DistillForm::SampledToken => TeacherSupport::SampledToken,
    }
}
