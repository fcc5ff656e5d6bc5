//! The distillation loss over sequences: divergence per token, mask, clip, reduce.

use burn::tensor::{Bool, Tensor};

use crate::backend::DivergenceBackend;
use crate::check;
use crate::error::Result;
use crate::kind::DivergenceOptions;
use crate::positions::{TeacherTarget, divergence_at};
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
        check::same_shape("mask", &[batch, time], &mask.dims())?;
        check_reduction(self.reduction)?;
        let rows = check::mask_rows(&mask)?;
        let tokens = rows.count(batch * time);
        let values = divergence_at(student, teacher, rows.clone(), self.options)?;
        let per_token = scatter_rows(values, &rows, batch, time);
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
    rows: &crate::chunks::Rows,
    batch: usize,
    time: usize,
) -> Tensor<B, 2> {
    match rows {
        crate::chunks::Rows::All => values.reshape([batch, time]),
        crate::chunks::Rows::Selected(idx) => {
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
