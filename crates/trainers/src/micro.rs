//! The targets stage: a step's rows split into mini-batches of micro-batches, each with the
//! constants its method fixed before the step's first update.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Tensor, TensorData};
use opd_divergences::TrainingBackend;
use opd_policy::{SequenceBatch, Trainable};
use opd_tasks::Task;

use crate::config::OutputHead;
use crate::error::Result;
use crate::method::{LinearIn, Method, MicroBatch, Prepared, Sizes};
use crate::rows::StepRows;
use opd_divergences::host_values;
use opd_divergences::{Counts, Reduction};

/// One micro-batch, fixed before the step's first update.
pub(crate) struct Micro<B: TrainingBackend> {
    pub batch: SequenceBatch,
    pub response_mask: Tensor<B, 2, Bool>,
    /// `log π_old(ŷ_t)` `[m, R]`.
    pub old: Tensor<B, 2>,
    /// The method's constants and loss mask.
    pub prepared: Prepared<B>,
    /// Host copy of the loss mask.
    pub counted: Vec<bool>,
    /// Counted tokens, and rows with at least one.
    pub count: Counts,
    /// Whether the loss takes the logits from the output head fused with it.
    pub fused_head: bool,
    /// What the loss is a weighted sum of, and its weights `[m, R]` (see [`LinearIn`]).
    pub linear: Option<(LinearIn, Tensor<B, 2>)>,
}

/// How a step's rows are split: into `mini_batches` updates, and each between `workers`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowSplit {
    /// Updates per step.
    pub mini_batches: usize,
    /// This worker.
    pub rank: usize,
    /// Workers sharing each mini-batch (1 alone).
    pub workers: usize,
}

/// The rows with a response, split into `split.mini_batches` slices; of each slice, this
/// worker's part (`[r·n/W, (r+1)·n/W)`; all of it for one worker) in micro-batches of
/// `sizes.micro_batch` rows, each with its method's targets.
pub(crate) fn prepare<B: TrainingBackend, M: Trainable<B>>(
    method: &dyn Method<B, M>,
    student: &M,
    rows: &StepRows,
    tasks: &[Task],
    advantages: &[f64],
    split: RowSplit,
    sizes: Sizes,
) -> Result<Vec<Vec<Micro<B>>>> {
    let RowSplit {
        mini_batches,
        rank,
        workers,
    } = split;
    let kept: Vec<usize> = (0..rows.responses.len())
        .filter(|&r| !rows.responses[r].is_empty())
        .collect();
    let n = mini_batches.min(kept.len());
    let device = crate::device::device_of(student);
    let linear_in = method.linear_in();
    let mut minis = Vec::with_capacity(n);
    for u in 0..n {
        let slice = &kept[u * kept.len() / n..(u + 1) * kept.len() / n];
        let slice = &slice[rank * slice.len() / workers..(rank + 1) * slice.len() / workers];
        let mut micros = Vec::new();
        for chunk in slice.chunks(sizes.micro_batch) {
            let batch = SequenceBatch::new(
                chunk.iter().map(|&r| rows.contexts[r].clone()).collect(),
                chunk.iter().map(|&r| rows.responses[r].clone()).collect(),
            )?;
            let response_mask = batch.response_mask::<B>(&device);
            let width = batch.response_width();
            let mut old_host = vec![0.0f32; chunk.len() * width];
            for (i, &r) in chunk.iter().enumerate() {
                old_host[i * width..i * width + rows.old[r].len()].copy_from_slice(&rows.old[r]);
            }
            let old = Tensor::from_data(
                TensorData::new(old_host.clone(), [chunk.len(), width]),
                &device,
            );
            let fused_head = student.output_head().is_some_and(|head| {
                fuse_head(
                    &head,
                    chunk.len() * width,
                    sizes.output_head,
                    linear_in.is_some(),
                )
            });
            let micro = MicroBatch {
                rows,
                chunk,
                tasks,
                advantages,
                batch: &batch,
                response_mask: &response_mask,
                old: &old,
                old_host: &old_host,
                sizes,
                fused_head,
            };
            let prepared = method.targets(student, &micro)?;
            let counted: Vec<bool> = host_values(prepared.loss_mask.clone().int().float())
                .iter()
                .map(|&m| m > 0.5)
                .collect();
            let per_row: Vec<usize> = counted
                .chunks(width.max(1))
                .map(|row| row.iter().filter(|&&m| m).count())
                .collect();
            let count = Counts {
                tokens: per_row.iter().sum(),
                sequences: per_row.iter().filter(|&&n| n > 0).count(),
            };
            // Only a fused head reads the weights.
            let linear = linear_in.filter(|_| fused_head).map(|(of, reduction)| {
                let weights = token_weights(&counted, &per_row, width, reduction);
                let data = TensorData::new(weights, [chunk.len(), width]);
                (of, Tensor::from_data(data, &device))
            });
            micros.push(Micro {
                batch,
                response_mask,
                old,
                prepared,
                counted,
                count,
                fused_head,
                linear,
            });
        }
        minis.push(micros);
    }
    Ok(minis)
}

/// Each token's weight `c_t` under `reduction`, up to one factor for the whole batch, row-major
/// `[rows, width]`: 1 at counted tokens (token mean, constant length, sum), `1 / len_b` for a
/// sequence mean, 0 elsewhere.
fn token_weights(
    counted: &[bool],
    per_row: &[usize],
    width: usize,
    reduction: Reduction,
) -> Vec<f32> {
    counted
        .iter()
        .enumerate()
        .map(|(i, &counted)| match (counted, reduction) {
            (false, _) => 0.0,
            (true, Reduction::SequenceMean) => 1.0 / per_row[i / width] as f32,
            (true, _) => 1.0,
        })
        .collect()
}

/// Logits a micro-batch may form whole when the head trains: 1 GB of f32.
const FORMED_LOGITS_LIMIT: usize = 1 << 28;

/// Whether the losses of a micro-batch of `positions` response positions take the logits from
/// the output head fused with them (the log-probs through `sequence_log_probs_from_hidden`,
/// the divergences through `DistillationLoss::forward_from_hidden`: no `[m, R, V]` logits or
/// gradient) rather than from formed logits. Under [`OutputHead::Auto`] the head fuses when
/// it costs no more products than the formed logits: a frozen head (LoRA; the forward also
/// forms `∂value/∂h`), or a loss `linear` in what the head forms (the forward forms the
/// gradients, see `crate::method::LinearIn`). Otherwise a head that trains (a tied embedding
/// under full fine-tuning) forms its blocks' logits again in the backward, and a divergence's
/// teacher blocks too, so it fuses only when the logits would pass [`FORMED_LOGITS_LIMIT`],
/// where they and their gradient become the step's peak.
pub(crate) fn fuse_head<B: AutodiffBackend>(
    head: &Tensor<B, 2>,
    positions: usize,
    output_head: OutputHead,
    linear: bool,
) -> bool {
    let logits = positions * head.dims()[0];
    match output_head {
        OutputHead::Fused => true,
        OutputHead::Formed => false,
        OutputHead::Auto => !head.is_require_grad() || linear || logits > FORMED_LOGITS_LIMIT,
    }
}
