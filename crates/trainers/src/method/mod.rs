//! The methods, one file each, behind one trait.
//!
//! A step hands a method its stages in order:
//!
//! | stage | the method's part | passes on |
//! |---|---|---|
//! | rollouts | [`Method::rollouts`]: the student's samples, `G` per prompt, or the references | [`StepRows`] |
//! | advantages | [`Method::sequence_advantages`] from the rewards | [`SequenceAdvantages`] |
//! | targets | [`Method::targets`] per micro-batch, before any update: teacher outputs, token advantages, `π_ref`, the loss mask | [`Prepared`] holding a [`Targets`] |
//! | loss | [`Targets::loss`] on the student's [`Forward`] | [`Loss`]: named per-token parts |
//! | update | [`Method::after_update`] after each optimizer step (the EMA teacher) | |
//!
//! To add a method: write its config (serde, with `validate`) and a type implementing
//! [`Method`] in a file of this folder, and add one arm to [`crate::Objective`] and to
//! [`build`]. `docs/development.md` walks through an example.

mod advantages;
mod forward;
pub(crate) mod grpo;
pub(crate) mod opd;
mod opd_config;
pub(crate) mod opsd;
mod routing;
pub(crate) mod sdft;
pub(crate) mod sdpo;
mod self_teacher;
pub(crate) mod sft;
#[cfg(test)]
mod sft_kl_example;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Tensor};
use opd_divergences::TrainingBackend;

use opd_policy::{ChatTokenizer, Llama, SequenceBatch, Trainable};
use opd_tasks::Task;
use opd_teachers::{PrivilegedTemplate, Request, Teacher, TeacherOutput, TeacherSupport};

pub use forward::Forward;
pub use grpo::GrpoConfig;
pub use opd_config::{OpdConfig, OpdForm, TrustRegionEstimator};
pub use opsd::{OpsdConfig, SampledTokenBaseline};
pub use sdft::SdftConfig;
pub use sdpo::SdpoConfig;
pub use sft::SftConfig;

use crate::error::Result;
use crate::rows::StepRows;
use crate::settings::DistillForm;
use opd_divergences::Reduction;

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

/// What a method's loss is a weighted sum of, with weights fixed before the forward: then
/// `L = s · Σ_t c_t x_t` over the counted tokens, with `c_t` the aggregation's weight of each
/// (1 for a token mean or a constant length, `1 / len_b` for a sequence mean). Told this, an
/// output head fused with the loss that trains (a tied embedding) forms its gradient in the
/// forward instead of forming its logits again in the backward
/// (`opd_divergences::HeadOptions::linear`); the backward checks it, so a wrong claim costs
/// time, never a wrong gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearIn {
    /// `x_t = log π_θ(ŷ_t)` at τ = 1 (SFT's NLL).
    LogProbs,
    /// `x_t` = the divergence to the teacher of [`Forward::divergence`] (unclipped).
    Divergence,
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
    pub rows: &'a StepRows,
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

impl<B: TrainingBackend> MicroBatch<'_, B> {
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
pub struct Prepared<B: TrainingBackend> {
    /// Positions the loss counts: the response mask, less rows a self-teacher had nothing to
    /// show for (SDPO without a demonstration or feedback).
    pub loss_mask: Tensor<B, 2, Bool>,
    /// Rows masked out for lack of privileged information.
    pub rows_without_privilege: usize,
    /// What the loss reads.
    pub targets: Box<dyn Targets<B>>,
}

impl<B: TrainingBackend> Prepared<B> {
    /// Targets counted on every response position.
    pub fn on_responses(micro: &MicroBatch<'_, B>, targets: impl Targets<B> + 'static) -> Self {
        Self {
            loss_mask: micro.response_mask.clone(),
            rows_without_privilege: 0,
            targets: Box::new(targets),
        }
    }
}

/// One micro-batch's loss as the method returns it.
pub struct Loss<B: TrainingBackend> {
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

impl<B: TrainingBackend> Loss<B> {
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
pub trait Targets<B: TrainingBackend> {
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
pub trait Method<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
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
    fn targets(&self, student: &M, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>>;

    /// What the method's loss is a weighted sum of, and its aggregation, when its weights are
    /// fixed before the forward (see [`LinearIn`]); `None` when the loss is not linear in
    /// what the head forms (clipped ratios, importance weights from this forward).
    fn linear_in(&self) -> Option<(LinearIn, Reduction)> {
        None
    }

    /// Called after each optimizer step (the EMA teacher moves here).
    fn after_update(&mut self, _student: &M) -> Result<()> {
        Ok(())
    }

    /// The weights a teacher moved on its own (the EMA's), which checkpoints keep.
    fn teacher_weights(&self) -> Option<&M::Inner> {
        None
    }

    /// Puts back weights saved from [`Method::teacher_weights`].
    fn set_teacher_weights(&mut self, _weights: M::Inner) {}

    /// The names of the method's teachers, when it has several (per-teacher metrics).
    fn teacher_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What [`build`] needs besides the objective.
pub struct Parts<'a, B: AutodiffBackend, M: Trainable<B> = Llama<B>> {
    /// The student at step 0 (self-teachers and `π_ref` copy it).
    pub student: &'a M,
    /// The student's tokenizer (self-teachers render their privileged prompts with it).
    pub tokenizer: &'a ChatTokenizer,
    /// OPD's teacher models, named (tasks choose theirs by name; the first is the default);
    /// for self-distillation, at most one: the weights that read the privileged context in
    /// place of the configured self-teacher's.
    pub teachers: Vec<(String, Box<dyn Teacher<B, M>>)>,
    /// The tasks the trainer draws from (OPD routes each to its teacher).
    pub tasks: &'a [Task],
    /// The wording of the self-teacher's privileged prompt.
    pub template: PrivilegedTemplate,
}

/// The teacher support a self-distillation form needs.
fn distill_support(form: DistillForm) -> TeacherSupport {
    match form {
        DistillForm::Full => TeacherSupport::Logits,
        DistillForm::SampledToken => TeacherSupport::SampledToken,
    }
}
