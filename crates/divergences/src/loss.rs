//! The distillation loss over sequences: divergence per token, mask, clip, reduce.

use burn::tensor::{Bool, Tensor};

use crate::backend::DivergenceBackend;
use crate::buckets::{float, primitive};
use crate::check;
use crate::chunks::Rows;
use crate::error::Result;
use crate::head::{BlockObserver, HeadOptions, lifted, linear_rows};
use crate::kind::DivergenceOptions;
use crate::positions::{TeacherTarget, divergence_at, flatten};
use crate::reduce::{Reduction, check_reduction, clip_per_token, reduce_unchecked};

/// `L = reduce_{m}(min(D(p_T ‖ p_S)_{b,t}, clip))` over student logits `[B, T, V]`.
///
/// Only the positions the mask selects are evaluated (padding costs nothing), in chunks of
/// `options.chunk_size` positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillationLoss {
    /// Divergence, support, temperature and chunk size.
    pub options: DivergenceOptions,
    /// Per-token clipping of the divergence, `min(D_t, clip)`; `None` keeps it unclipped.
    pub token_clip: Option<f64>,
    /// How the per-token values are reduced.
    pub reduction: Reduction,
}

/// What a loss evaluation returns: the scalar to differentiate and per-token values to log.
#[derive(Debug, Clone)]
pub struct LossOutput<B: DivergenceBackend> {
    /// The reduced loss, shape `[1]`.
    pub loss: Tensor<B, 1>,
    /// Per-token divergence `[B, T]` before clipping, zero where the mask is false.
    pub per_token: Tensor<B, 2>,
    /// Number of positions the mask selected.
    pub tokens: usize,
}

impl DistillationLoss {
    /// A token-mean loss with `options` and no clipping.
    pub fn new(options: DivergenceOptions) -> Self {
        Self {
            options,
            token_clip: None,
            reduction: Reduction::TokenMean,
        }
    }

    /// Sets per-token clipping.
    pub fn with_token_clip(mut self, clip: f64) -> Self {
        self.token_clip = Some(clip);
        self
    }

    /// Sets the reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Evaluates the loss for student logits `[B, T, V]`, a teacher of the same layout and a
    /// mask `[B, T]` of the response positions to train on.
    pub fn forward<B: DivergenceBackend>(
        &self,
        student: Tensor<B, 3>,
        teacher: TeacherTarget<B, 3>,
        mask: Tensor<B, 2, Bool>,
    ) -> Result<LossOutput<B>> {
        let [batch, time, _] = student.dims();
        let rows = self.rows(&mask, [batch, time])?;
        let values = divergence_at(student, teacher, rows.clone(), self.options)?;
        self.output(values, &rows, mask)
    }

    /// The same loss from the student's final hidden states `[B, T, d]` and output head
    /// `[V, d]` (student logits `z = hidden · headᵀ`), with the output head fused with the
    /// divergence: the logits are formed a block of positions at a time (128 MB of them) in
    /// the forward and the backward and never as one `[B, T, V]` tensor, the teacher's too
    /// when it is given by its hidden states ([`TeacherTarget::Hidden`]). The gradient reaches
    /// `hidden` and, when it trains, `head` (a tied embedding); a frozen head costs no more
    /// products than the formed logits; a trained one forms each block again in the backward,
    /// unless told the loss's weights ([`Self::forward_from_hidden_with`]).
    pub fn forward_from_hidden<B: DivergenceBackend>(
        &self,
        hidden: Tensor<B, 3>,
        head: Tensor<B, 2>,
        teacher: TeacherTarget<B, 3>,
        mask: Tensor<B, 2, Bool>,
    ) -> Result<LossOutput<B>> {
        self.forward_from_hidden_with(hidden, head, teacher, mask, Default::default())
    }

    /// [`Self::forward_from_hidden`] with [`HeadOptions`]: an observer of the blocks of logits
    /// the forward forms (the student's and the teacher's, as constants), and the weights of a
    /// loss linear in the divergences, with which a head that trains forms its gradient in the
    /// forward (a loss without clipping, token mean: the mask).
    pub fn forward_from_hidden_with<B: DivergenceBackend>(
        &self,
        hidden: Tensor<B, 3>,
        head: Tensor<B, 2>,
        teacher: TeacherTarget<B, 3>,
        mask: Tensor<B, 2, Bool>,
        head_options: HeadOptions<'_, B>,
    ) -> Result<LossOutput<B>> {
        let options = self.options.validated()?;
        let [batch, time, width] = hidden.dims();
        let [vocab, head_width] = head.dims();
        check::non_empty("hidden states", &[batch, time, width])?;
        check::non_empty("output head", &[vocab, head_width])?;
        check::same_shape("output head", &[vocab, width], &[vocab, head_width])?;
        let rows = self.rows(&mask, [batch, time])?;
        teacher.validate(&[batch, time, vocab], &rows)?;
        options.support.top_k(vocab)?;
        let HeadOptions { observe, linear } = head_options;
        let linear = linear
            .map(|c| linear_rows(c, &rows, [batch, time]))
            .transpose()?;
        let mut observe = observe.map(lifted);
        let values = float(B::head_divergence_rows(
            primitive(flatten(hidden)),
            primitive(head),
            &teacher.into_rows(),
            &rows,
            options,
            crate::head::rows_per_block(vocab),
            observe
                .as_mut()
                .map(|observe| observe as &mut BlockObserver<'_, B>),
            linear,
        ));
        check::finite("divergence", &values)?;
        self.output(values, &rows, mask)
    }

    /// The positions `mask` `[B, T]` selects, checked with the reduction.
    fn rows<B: DivergenceBackend>(
        &self,
        mask: &Tensor<B, 2, Bool>,
        shape: [usize; 2],
    ) -> Result<Rows> {
        check::same_shape("mask", &shape, &mask.dims())?;
        check_reduction(self.reduction)?;
        check::mask_rows(mask)
    }

    /// Per-token values placed at the selected positions, clipped and reduced.
    fn output<B: DivergenceBackend>(
        &self,
        values: Tensor<B, 1>,
        rows: &Rows,
        mask: Tensor<B, 2, Bool>,
    ) -> Result<LossOutput<B>> {
        let [batch, time] = mask.dims();
        let tokens = rows.count(batch * time);
        let per_token = scatter_rows(values, rows, batch, time);
        let clipped = match self.token_clip {
            Some(clip) => clip_per_token(per_token.clone(), clip)?,
            None => per_token.clone(),
        };
        Ok(LossOutput {
            loss: reduce_unchecked(clipped, mask, self.reduction),
            per_token,
            tokens,
        })
    }
}

/// Places values of the selected rows into a `[B, T]` tensor of zeros (differentiably).
pub(crate) fn scatter_rows<B: DivergenceBackend>(
    values: Tensor<B, 1>,
    rows: &Rows,
    batch: usize,
    time: usize,
) -> Tensor<B, 2> {
    match rows {
        Rows::All => values.reshape([batch, time]),
        Rows::Selected(idx) => {
            let device = values.device();
            let idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let n = idx.len();
            let idx = Tensor::from_data(burn::tensor::TensorData::new(idx, [n]), &device);
            Tensor::zeros([batch * time], &device)
                .select_assign(0, idx, values, burn::tensor::IndexingUpdateOp::Add)
                .reshape([batch, time])
        }
    }
}
