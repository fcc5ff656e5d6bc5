//! The student's side of one micro-batch's loss: what a method's [`super::Targets::loss`]
//! reads, each part formed on first use.

use opd_divergences::TrainingBackend;
use std::cell::{OnceCell, RefCell};

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use opd_divergences::sampled::{sequence_log_probs, sequence_log_probs_from_hidden_with};
use opd_divergences::{
    DistillationLoss, DivergenceOptions, HeadOptions, LogitBlock, TeacherTarget, head_logits,
    token_log_probs,
};
use opd_teachers::TeacherOutput;

use crate::error::Result;
use crate::losses::{MAX_LOG_RATIO, importance_ratio};
use crate::measure::diagnosis::Diagnosis;
use opd_divergences::host_values;

use super::LinearIn;

/// The student's side of one micro-batch's loss, with graph.
///
/// The step either forms the response logits `[m, R, V]` up front, or leaves them to the
/// output head fused with each loss (`crate::OutputHead`): the log-probs of the sampled tokens
/// through `opd_divergences::sampled::sequence_log_probs_from_hidden`, the divergences through
/// `DistillationLoss::forward_from_hidden`, the logits formed a block of rows at a time. The
/// log-probs are formed only when a loss reads them ([`Self::log_probs`]): a divergence's loss
/// takes the importance ratios' log-probs from the blocks it formed.
pub struct Forward<B: TrainingBackend> {
    /// Final hidden states at the response positions `[m, R, d]`.
    pub(crate) hidden: Tensor<B, 3>,
    /// The output head `[V, d]` (`logits = hidden · headᵀ`); `None` when the head is not a
    /// plain product, and the logits were formed up front.
    pub(crate) head: Option<Tensor<B, 2>>,
    /// The response logits, once formed.
    pub(crate) logits: OnceCell<Tensor<B, 3>>,
    /// `log π_θ(ŷ_t)` at τ = 1 `[m, R]`, with graph, once formed.
    pub(crate) log_probs: OnceCell<Tensor<B, 2>>,
    /// The same values without graph, flat `[m·R]`, at the positions a fused divergence's
    /// blocks covered (zero elsewhere), when the loss did not form [`Self::log_probs`].
    pub(crate) observed_log_probs: RefCell<Option<Vec<f32>>>,
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
    /// Whether the rows were sampled (they have importance ratios).
    pub(crate) sampled: bool,
    /// Host copy of `ρ_t`, once computed ([`Self::ratio_host`]).
    pub(crate) ratio: OnceCell<Vec<f32>>,
    /// Positions per chunk of the full-vocabulary computations.
    pub chunk: usize,
    /// The micro-batch's diagnostics, when it is diagnosed: the first fused head that forms
    /// blocks of logits shows them to it.
    pub(crate) diagnosis: RefCell<Option<Diagnosis>>,
    /// The teacher's output, for the diagnostics (`None` without a teacher).
    pub(crate) teacher: Option<TeacherOutput<B>>,
    /// What the method's loss is a weighted sum of, and its weights `[m, R]`: told to the
    /// fused head that forms it.
    pub(crate) linear: Option<(LinearIn, Tensor<B, 2>)>,
}

impl<B: TrainingBackend> Forward<B> {
    /// The response logits `[m, R, V]` with graph, formed on first use.
    pub fn logits(&self) -> Tensor<B, 3> {
        self.logits
            .get_or_init(|| {
                let head = self
                    .head
                    .clone()
                    .expect("logits without a head are formed up front");
                head_logits(self.hidden.clone(), head)
            })
            .clone()
    }

    /// Whether the teacher gives a full distribution (logits or hidden states): its
    /// diagnostics come from a divergence's blocks, which hold both models' logits.
    fn full_teacher(&self) -> bool {
        matches!(
            &self.teacher,
            Some(TeacherOutput::Distribution {
                target: TeacherTarget::Logits(_) | TeacherTarget::Hidden { .. },
                ..
            })
        )
    }

    /// `log π_θ(ŷ_t)` at τ = 1 `[m, R]`, with gradient, formed on first use (the blocks of a
    /// fused head shown to a pending diagnosis, unless a divergence's loss will show both
    /// models' blocks).
    pub fn log_probs(&self) -> Result<Tensor<B, 2>> {
        if let Some(lp) = self.log_probs.get() {
            return Ok(lp.clone());
        }
        let full = self.full_teacher();
        let mut diagnosis = self.diagnosis.borrow_mut();
        let lp = match diagnosis.as_mut().filter(|d| !d.observed && !full) {
            Some(d) => self.sampled_log_probs(
                1.0,
                Some(&mut |block| d.block(block, self.teacher.as_ref(), &self.counted_host)),
            )?,
            None => self.sampled_log_probs(1.0, None)?,
        };
        Ok(self.log_probs.get_or_init(|| lp).clone())
    }

    /// `log softmax(z_θ / τ)[ŷ_t]` `[m, R]`, with gradient (τ = 1: [`Self::log_probs`]).
    pub fn log_probs_at(&self, temperature: f64) -> Result<Tensor<B, 2>> {
        match temperature == 1.0 {
            true => self.log_probs(),
            false => self.sampled_log_probs(temperature, None),
        }
    }

    /// `log softmax(z_θ / τ)[ŷ_t]` through the fused head (its blocks shown to `observe`) or
    /// from the formed logits.
    fn sampled_log_probs(
        &self,
        temperature: f64,
        observe: Option<&mut dyn FnMut(LogitBlock<B>)>,
    ) -> Result<Tensor<B, 2>> {
        let (hidden, ids, mask) = (
            self.hidden.clone(),
            self.ids.clone(),
            self.response_mask.clone(),
        );
        let linear = (temperature == 1.0)
            .then(|| self.linear_weights(LinearIn::LogProbs))
            .flatten();
        Ok(match (&self.head, self.logits.get()) {
            (Some(head), None) => sequence_log_probs_from_hidden_with(
                hidden,
                head.clone(),
                ids,
                mask,
                temperature,
                HeadOptions { observe, linear },
            )?,
            _ => sequence_log_probs(self.logits(), ids, mask, temperature, self.chunk)?,
        })
    }

    /// The loss's weights when it is a weighted sum of `of`.
    fn linear_weights(&self, of: LinearIn) -> Option<Tensor<B, 2>> {
        self.linear
            .as_ref()
            .filter(|(linear, _)| *linear == of)
            .map(|(_, weights)| weights.clone())
    }

    /// Host copy of `ρ_t = π_θ(ŷ_t)/π_old(ŷ_t)`, row-major `[m, R]` (empty when the rows were
    /// not sampled): from [`Self::log_probs`], or from the log-probs a fused divergence read
    /// off its blocks when the loss formed none.
    pub fn ratio_host(&self) -> Result<&[f32]> {
        if !self.sampled {
            return Ok(&[]);
        }
        if let Some(ratio) = self.ratio.get() {
            return Ok(ratio);
        }
        let observed = self.observed_log_probs.borrow();
        let ratio = match (self.log_probs.get(), observed.as_ref()) {
            (None, Some(lp)) => {
                let old = host_values(self.old.clone().inner());
                lp.iter()
                    .zip(&old)
                    .map(|(lp, old)| (lp - old).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp())
                    .collect()
            }
            _ => {
                drop(observed);
                host_values(importance_ratio(self.log_probs()?, self.old.clone()).inner())
            }
        };
        Ok(self.ratio.get_or_init(|| ratio))
    }

    /// A divergence to the teacher's `output` (full logits, hidden states or a top-k) per
    /// token `[m, R]`, with gradient, at the temperature the teacher scored at; zero off the
    /// loss mask.
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
        let Some(head) = self.head.clone().filter(|_| self.logits.get().is_none()) else {
            return Ok(loss.forward(self.logits(), teacher, mask)?.per_token);
        };
        // The blocks the fused head forms anyway give the diagnostics and, when no loss formed
        // the log-probs, the importance ratios' log-probs.
        let mut diagnosis = self.diagnosis.borrow_mut();
        let mut diagnosis = diagnosis.as_mut().filter(|d| !d.observed);
        let mut log_probs = (self.sampled
            && self.log_probs.get().is_none()
            && self.observed_log_probs.borrow().is_none())
        .then(|| BlockLogProbs::new(&self.ids));
        let linear = self.linear_weights(LinearIn::Divergence);
        if diagnosis.is_none() && log_probs.is_none() {
            let options = HeadOptions {
                observe: None,
                linear,
            };
            return Ok(loss
                .forward_from_hidden_with(self.hidden.clone(), head, teacher, mask, options)?
                .per_token);
        }
        let mut failed = None;
        let mut observe = |block: LogitBlock<B>| {
            if let Some(lp) = log_probs.as_mut()
                && let Err(e) = lp.read(&block, self.chunk)
            {
                failed.get_or_insert(e);
            }
            if let Some(d) = diagnosis.as_mut() {
                d.block(block, Some(output), &self.counted_host);
            }
        };
        let options = HeadOptions {
            observe: Some(&mut observe),
            linear,
        };
        let out =
            loss.forward_from_hidden_with(self.hidden.clone(), head, teacher, mask, options)?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(lp) = log_probs {
            *self.observed_log_probs.borrow_mut() = Some(lp.values);
        }
        Ok(out.per_token)
    }
}

/// `log π_θ(ŷ_t)` at τ = 1 read off a fused loss's blocks of logits, without graph.
struct BlockLogProbs {
    /// The response ids, flat `[m·R]`.
    ids: Vec<i64>,
    /// The log-probs, flat `[m·R]`; zero where no block reached.
    values: Vec<f32>,
}

impl BlockLogProbs {
    fn new<B: AutodiffBackend>(ids: &Tensor<B, 2, Int>) -> Self {
        let ids: Vec<i64> = ids.to_data().convert::<i64>().into_vec().expect("int ids");
        Self {
            values: vec![0.0; ids.len()],
            ids,
        }
    }

    /// Reads the log-probs of the block's positions from its student logits.
    fn read<B: TrainingBackend>(&mut self, block: &LogitBlock<B>, chunk: usize) -> Result<()> {
        let ids: Vec<i64> = block.positions.iter().map(|&p| self.ids[p]).collect();
        let n = ids.len();
        let device = block.student.device();
        let ids = Tensor::from_data(TensorData::new(ids, [n]), &device);
        let values = token_log_probs(block.student.clone(), ids, 1.0, chunk)?;
        for (&p, v) in block.positions.iter().zip(host_values(values.inner())) {
            self.values[p] = v;
        }
        Ok(())
    }
}
