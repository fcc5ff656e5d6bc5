//! The loss stage: forward, loss and backward of each micro-batch of a mini-batch, the
//! gradients accumulated.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use opd_divergences::DivergenceBackend;
use opd_divergences::sampled::sequence_log_probs;
use opd_policy::{Llama, Policy};

use crate::diagnostics::host;
use crate::error::Result;
use crate::method::Forward;
use crate::micro::Micro;
use crate::objectives::importance_ratio;
use crate::telemetry::{RowTeachers, Telemetry};
use opd_divergences::{Counts, reduce_share};

/// What a mini-batch's backward passes produced.
pub(crate) enum Gradients {
    /// Every micro-batch's loss was finite: the accumulated gradients and the mini-batch's
    /// loss.
    Finite { grads: GradientsParams, loss: f64 },
    /// A micro-batch's loss was NaN or infinite; nothing is applied.
    NonFinite { micro_batch: usize, value: f64 },
}

/// How the loss stage runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LossSettings {
    /// Positions per chunk of the full-vocabulary computations.
    pub chunk: usize,
    /// Whether the rows were sampled (importance ratios exist).
    pub sampled: bool,
    /// Top-k of the overlap diagnostics, when this mini-batch is diagnosed.
    pub diagnose: Option<usize>,
}

/// The summed counts of `mini`'s micro-batches (the `Normalizer`'s, before any exchange).
pub(crate) fn counts<B: AutodiffBackend + DivergenceBackend>(mini: &[Micro<B>]) -> Counts {
    mini.iter().fold(
        Counts {
            tokens: 0,
            sequences: 0,
        },
        |n, m| Counts {
            tokens: n.tokens + m.count.tokens,
            sequences: n.sequences + m.count.sequences,
        },
    )
}

/// The accumulated gradients of `mini`, each micro-batch's loss aggregated over `norm`, the
/// counts of the whole mini-batch (of every worker's part in a data-parallel run), so
/// accumulation and sharing change nothing but memory; telemetry from each loss. Empty
/// gradients when no micro-batch counts a token.
pub(crate) fn gradients<B: AutodiffBackend + DivergenceBackend>(
    student: &Llama<B>,
    mini: &[Micro<B>],
    norm: Counts,
    settings: LossSettings,
    telemetry: &mut Telemetry,
) -> Result<Gradients> {
    let mut accumulator = GradientsAccumulator::new();
    let mut total = 0.0;
    for (m, micro) in mini.iter().enumerate() {
        if micro.count.tokens == 0 {
            continue;
        }
        let (loss, value) = micro_loss(student, micro, norm, settings, telemetry)?;
        if !value.is_finite() {
            return Ok(Gradients::NonFinite {
                micro_batch: m,
                value,
            });
        }
        total += value;
        let grads = GradientsParams::from_grads(loss.backward(), student);
        accumulator.accumulate(student, grads);
        telemetry.trained_tokens += micro.count.tokens;
    }
    Ok(Gradients::Finite {
        grads: accumulator.grads(),
        loss: total,
    })
}

/// One micro-batch's share of the mini-batch loss (with graph) and its value.
fn micro_loss<B: AutodiffBackend + DivergenceBackend>(
    student: &Llama<B>,
    micro: &Micro<B>,
    norm: Counts,
    settings: LossSettings,
    telemetry: &mut Telemetry,
) -> Result<(Tensor<B, 1>, f64)> {
    let logits = student.response_logits(&micro.batch)?;
    let ids = micro.batch.response_ids::<B>(&logits.device());
    let log_probs = sequence_log_probs(
        logits.clone(),
        ids.clone(),
        micro.response_mask.clone(),
        1.0,
        settings.chunk,
    )?;
    let ratio_host = if settings.sampled {
        host(importance_ratio(log_probs.clone(), micro.old.clone()).inner())
    } else {
        Vec::new()
    };
    let rows = RowTeachers {
        of_row: micro.prepared.targets.teacher_of_rows(),
        width: micro.batch.response_width(),
    };
    if let Some(k) = settings.diagnose {
        let teacher = micro.prepared.targets.teacher();
        telemetry.diagnose::<B>(logits.clone().inner(), teacher, &micro.counted, k, rows);
    }
    let forward = Forward {
        logits,
        log_probs,
        old: micro.old.clone(),
        ids,
        response_mask: micro.response_mask.clone(),
        loss_mask: micro.prepared.loss_mask.clone(),
        counted_host: micro.counted.clone(),
        ratio_host,
        chunk: settings.chunk,
    };
    let loss = micro.prepared.targets.loss(&forward)?;
    let parts: Vec<Tensor<B, 1>> = loss
        .parts
        .iter()
        .map(|(_, per_token)| {
            reduce_share(
                per_token.clone(),
                forward.loss_mask.clone(),
                loss.aggregation,
                norm,
            )
        })
        .collect();
    // One read for every part's value.
    let values = host(Tensor::cat(parts.clone(), 0).inner());
    let named: Vec<(&'static str, f64)> = loss
        .parts
        .iter()
        .zip(&values)
        .map(|((name, _), &v)| (*name, v as f64))
        .collect();
    let divergence = loss.divergence.map(|d| host(d.inner())).unwrap_or_default();
    telemetry.add_loss(
        &named,
        &divergence,
        &forward.ratio_host,
        &micro.counted,
        loss.clipped,
        rows,
    );
    let value = named.iter().map(|(_, v)| v).sum::<f64>();
    let total = parts
        .into_iter()
        .reduce(|a, b| a + b)
        .expect("every loss has a part");
    Ok((total, value))
}
