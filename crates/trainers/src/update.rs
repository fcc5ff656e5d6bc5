//! The loss stage: forward, loss and backward of each micro-batch of a mini-batch, the
//! gradients accumulated.

use opd_divergences::TrainingBackend;
use std::cell::{OnceCell, RefCell};

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use opd_policy::Trainable;

use crate::error::Result;
use crate::measure::diagnosis::{Diagnosis, diagnose_formed};
use crate::measure::telemetry::{RowTeachers, Telemetry};
use crate::method::Forward;
use crate::micro::Micro;
use opd_divergences::host_values;
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
pub(crate) fn counts<B: TrainingBackend>(mini: &[Micro<B>]) -> Counts {
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
pub(crate) fn gradients<B: TrainingBackend, M: Trainable<B>>(
    student: &M,
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
fn micro_loss<B: TrainingBackend, M: Trainable<B>>(
    student: &M,
    micro: &Micro<B>,
    norm: Counts,
    settings: LossSettings,
    telemetry: &mut Telemetry,
) -> Result<(Tensor<B, 1>, f64)> {
    let hidden = student.response_hidden(&micro.batch)?;
    let ids = micro.batch.response_ids::<B>(&hidden.device());
    let head = student.output_head();
    let rows = RowTeachers {
        of_row: micro.prepared.targets.teacher_of_rows(),
        width: micro.batch.response_width(),
    };
    let logits = OnceCell::new();
    if !micro.fused_head || head.is_none() {
        let _ = logits.set(student.project(hidden.clone()));
    }
    let forward = Forward {
        hidden,
        head,
        logits,
        log_probs: OnceCell::new(),
        observed_log_probs: RefCell::new(None),
        old: micro.old.clone(),
        ids,
        response_mask: micro.response_mask.clone(),
        loss_mask: micro.prepared.loss_mask.clone(),
        counted_host: micro.counted.clone(),
        sampled: settings.sampled,
        ratio: OnceCell::new(),
        chunk: settings.chunk,
        diagnosis: RefCell::new(
            settings
                .diagnose
                .map(|k| Diagnosis::new(k, rows.of_row, rows.width)),
        ),
        teacher: micro.prepared.targets.teacher().cloned(),
        linear: micro.linear.clone(),
    };
    let loss = micro.prepared.targets.loss(&forward)?;
    let ratio_host = forward.ratio_host()?;
    match forward.diagnosis.take() {
        Some(diagnosis) if diagnosis.observed => telemetry.absorb(&diagnosis.measured),
        Some(diagnosis) => diagnose_formed(&forward, micro, diagnosis.k, rows, telemetry),
        None => {}
    }
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
    let values = host_values(Tensor::cat(parts.clone(), 0).inner());
    let named: Vec<(&'static str, f64)> = loss
        .parts
        .iter()
        .zip(&values)
        .map(|((name, _), &v)| (*name, v as f64))
        .collect();
    let divergence = loss
        .divergence
        .map(|d| host_values(d.inner()))
        .unwrap_or_default();
    telemetry.add_loss(
        &named,
        &divergence,
        ratio_host,
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
