//! The portable implementation: chunked evaluation with burn tensor ops, on any backend.

use burn::tensor::activation::log_softmax;
use burn::tensor::{
    Int, Tensor, TensorPrimitive, backend::Backend, ops::FloatTensor, ops::IntTensor, s,
};

use crate::buckets::{self, Buckets, TeacherLogits, float, primitive};
use crate::chunks::{Chunk, Rows, chunks};
use crate::host_values;
use crate::kind::DivergenceOptions;
use crate::row_summary::RowSummary;

/// Per-row divergence values, `[rows.count(N)]`.
pub fn divergence_rows<B: Backend>(
    student: FloatTensor<B>,
    teacher: &TeacherLogits<B>,
    rows: &Rows,
    options: DivergenceOptions,
) -> FloatTensor<B> {
    let student = float::<B, 2>(student);
    let total = student.dims()[0];
    let values = chunks(rows, total, options.chunk_size)
        .iter()
        .map(|chunk| {
            Buckets::new(
                chunk.take(student.clone()),
                chunk.teacher(teacher),
                options.support,
                options.temperature,
            )
            .values(options.divergence)
        })
        .collect();
    primitive(Tensor::cat(values, 0))
}

/// `Σ_r grad_out_r ∂D_r/∂z_S`, `[N, V]`.
pub fn divergence_rows_backward<B: Backend>(
    student: FloatTensor<B>,
    teacher: &TeacherLogits<B>,
    rows: &Rows,
    options: DivergenceOptions,
    grad_out: FloatTensor<B>,
) -> FloatTensor<B> {
    let student = float::<B, 2>(student);
    let grad_out = float::<B, 1>(grad_out);
    let [total, vocab] = student.dims();
    let chunks = chunks(rows, total, options.chunk_size);
    primitive(assemble(
        total,
        vocab,
        &student.device(),
        &chunks,
        |chunk| {
            Buckets::new(
                chunk.take(student.clone()),
                chunk.teacher(teacher),
                options.support,
                options.temperature,
            )
            .gradient(options.divergence, options.temperature)
                * upstream(&grad_out, chunk)
        },
    ))
}

/// `log softmax(z / τ)[id]` per selected row, `[rows.count(N)]`.
pub fn token_log_probs<B: Backend>(
    logits: FloatTensor<B>,
    ids: IntTensor<B>,
    rows: &Rows,
    temperature: f64,
    chunk_size: usize,
) -> FloatTensor<B> {
    let logits = float::<B, 2>(logits);
    let ids = Tensor::<B, 1, Int>::from_primitive(ids);
    let total = logits.dims()[0];
    let values = chunks(rows, total, chunk_size)
        .iter()
        .map(|chunk| {
            buckets::token_log_probs(
                chunk.take(logits.clone()),
                chunk.take(ids.clone()),
                temperature,
            )
        })
        .collect();
    primitive(Tensor::cat(values, 0))
}

/// `Σ_r grad_out_r (onehot(id_r) − p_r) / τ`, `[N, V]`.
pub fn token_log_probs_backward<B: Backend>(
    logits: FloatTensor<B>,
    ids: IntTensor<B>,
    rows: &Rows,
    temperature: f64,
    chunk_size: usize,
    grad_out: FloatTensor<B>,
) -> FloatTensor<B> {
    let logits = float::<B, 2>(logits);
    let ids = Tensor::<B, 1, Int>::from_primitive(ids);
    let grad_out = float::<B, 1>(grad_out);
    let [total, vocab] = logits.dims();
    let chunks = chunks(rows, total, chunk_size);
    primitive(assemble(total, vocab, &logits.device(), &chunks, |chunk| {
        buckets::token_log_prob_gradient(
            chunk.take(logits.clone()),
            chunk.take(ids.clone()),
            temperature,
        ) * upstream(&grad_out, chunk)
    }))
}

/// Assembles the `[N, V]` gradient of a row-wise op from per-chunk gradients, each already
/// scaled by its rows' upstream gradient. A single whole chunk is returned as it is.
fn assemble<B: Backend>(
    total: usize,
    vocab: usize,
    device: &B::Device,
    chunks: &[Chunk],
    mut chunk_grad: impl FnMut(&Chunk) -> Tensor<B, 2>,
) -> Tensor<B, 2> {
    if let [only] = chunks
        && only.is_whole(total)
    {
        return chunk_grad(only);
    }
    chunks
        .iter()
        .fold(Tensor::zeros([total, vocab], device), |acc, chunk| {
            let g = chunk_grad(chunk);
            chunk.put(acc, g)
        })
}

/// Upstream gradient of this chunk's outputs, as a column `[len, 1]`.
fn upstream<B: Backend>(grad_out: &Tensor<B, 1>, chunk: &Chunk) -> Tensor<B, 2> {
    grad_out
        .clone()
        .slice(s![chunk.out_start..chunk.out_start + chunk.len])
        .unsqueeze_dim(1)
}

/// The portable [`RowSummary`]: `log_softmax`, the entropy as a sum of `p log p`, and burn's
/// `topk` (a full sort of each row).
pub fn summarize_rows<B: Backend>(
    logits: FloatTensor<B>,
    temperature: f64,
    k: usize,
) -> RowSummary {
    let logits = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(logits));
    let log_p = log_softmax(logits.div_scalar(temperature), 1);
    // `p log p` with `log p` floored, so a masked logit (`p = 0`, `log p = −∞`) adds 0, not NaN.
    let floored = log_p.clone().clamp_min(f32::MIN);
    let entropy = host_values((log_p.clone().exp() * floored).sum_dim(1).neg());
    let (ids, log_probs) = match k {
        0 => (Vec::new(), Vec::new()),
        _ => {
            let (values, ids) = log_p.topk_with_indices(k, 1);
            let ids = ids.into_data().convert::<i64>().into_vec().expect("ids");
            (ids, host_values(values))
        }
    };
    RowSummary {
        entropy,
        ids,
        log_probs,
        k,
    }
}
