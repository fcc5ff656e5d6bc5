//! The backend extension that evaluates divergences in chunks, with a closed-form backward.
//!
//! On a plain backend the default methods evaluate chunk by chunk with burn tensor ops. On
//! `Autodiff<B>` the forward runs on `B` and records a single graph node; its backward
//! recomputes each chunk's closed-form gradient, so neither pass holds more than
//! `O(chunk · V)` beyond the logits and their gradient. The teacher never receives a gradient
//! (stop-gradient), even when it shares the student's weights or graph.

use burn::backend::Autodiff;
use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::tensor::{Int, Tensor, backend::Backend, ops::FloatTensor, ops::IntTensor, s};

use crate::buckets::{self, Buckets, TeacherLogits, float, primitive};
use crate::chunks::{Chunk, Rows, chunks};
use crate::kind::DivergenceOptions;

/// A backend that can evaluate divergences over logits in chunks.
///
/// Every method has a default built from burn tensor ops: a backend opts in with an empty
/// `impl DivergenceBackend for MyBackend {}`. burn's `Flex`, `Wgpu` and `Cuda` (by feature)
/// and `Autodiff<B>` of any of them implement it here. Inputs are validated by the public
/// functions of this crate, not here.
pub trait DivergenceBackend: Backend {
    /// Divergence at each selected row of student logits `[N, V]` against the teacher:
    /// output `[rows.count(N)]`, `D(p_T(· | row) ‖ p_S(· | row))` per `options`.
    fn divergence_rows(
        student: FloatTensor<Self>,
        teacher: TeacherLogits<Self>,
        rows: Rows,
        options: DivergenceOptions,
    ) -> FloatTensor<Self> {
        let total = float::<Self, 2>(student.clone()).dims()[0];
        let values = chunks(&rows, total, options.chunk_size)
            .iter()
            .map(|chunk| {
                let s = chunk.take(float::<Self, 2>(student.clone()));
                Buckets::new(
                    s,
                    chunk.teacher(&teacher),
                    options.support,
                    options.temperature,
                )
                .values(options.divergence)
            })
            .collect();
        primitive(Tensor::cat(values, 0))
    }

    /// `log softmax(z / τ)[id]` at each selected row of logits `[N, V]` with ids `[N]`:
    /// output `[rows.count(N)]`. Its gradient is `(onehot(id) − p) / τ`.
    fn token_log_probs(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: Rows,
        temperature: f64,
        chunk_size: usize,
    ) -> FloatTensor<Self> {
        let total = float::<Self, 2>(logits.clone()).dims()[0];
        let ids = Tensor::<Self, 1, Int>::from_primitive(ids);
        let values = chunks(&rows, total, chunk_size)
            .iter()
            .map(|chunk| {
                buckets::token_log_probs(
                    chunk.take(float::<Self, 2>(logits.clone())),
                    chunk.take_1d(ids.clone()),
                    temperature,
                )
            })
            .collect();
        primitive(Tensor::cat(values, 0))
    }
}

#[cfg(feature = "flex")]
impl DivergenceBackend for burn::backend::Flex {}
#[cfg(feature = "wgpu")]
impl DivergenceBackend for burn::backend::Wgpu {}
#[cfg(feature = "cuda")]
impl DivergenceBackend for burn::backend::Cuda {}

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

#[derive(Debug)]
struct DivergenceBackward;

impl<B: Backend> Backward<B, 1> for DivergenceBackward {
    type State = (FloatTensor<B>, TeacherLogits<B>, Rows, DivergenceOptions);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(student_node)] = ops.parents else {
            return;
        };
        let (student, teacher, rows, options) = ops.state;
        let grad_out = float::<B, 1>(grads.consume::<B>(&ops.node));
        let student = float::<B, 2>(student);
        let [total, vocab] = student.dims();
        let chunks = chunks(&rows, total, options.chunk_size);
        let grad = assemble(total, vocab, &student.device(), &chunks, |chunk| {
            Buckets::new(
                chunk.take(student.clone()),
                chunk.teacher(&teacher),
                options.support,
                options.temperature,
            )
            .gradient(options.divergence, options.temperature)
                * upstream(&grad_out, chunk)
        });
        grads.register::<B>(student_node.id, primitive(grad));
    }
}

#[derive(Debug)]
struct TokenLogProbBackward;

impl<B: Backend> Backward<B, 1> for TokenLogProbBackward {
    type State = (FloatTensor<B>, IntTensor<B>, Rows, f64, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(logits_node)] = ops.parents else {
            return;
        };
        let (logits, ids, rows, temperature, chunk_size) = ops.state;
        let grad_out = float::<B, 1>(grads.consume::<B>(&ops.node));
        let logits = float::<B, 2>(logits);
        let ids = Tensor::<B, 1, Int>::from_primitive(ids);
        let [total, vocab] = logits.dims();
        let chunks = chunks(&rows, total, chunk_size);
        let grad = assemble(total, vocab, &logits.device(), &chunks, |chunk| {
            buckets::token_log_prob_gradient(
                chunk.take(logits.clone()),
                chunk.take_1d(ids.clone()),
                temperature,
            ) * upstream(&grad_out, chunk)
        });
        grads.register::<B>(logits_node.id, primitive(grad));
    }
}

impl<B: DivergenceBackend, C: CheckpointStrategy> DivergenceBackend for Autodiff<B, C> {
    fn divergence_rows(
        student: FloatTensor<Self>,
        teacher: TeacherLogits<Self>,
        rows: Rows,
        options: DivergenceOptions,
    ) -> FloatTensor<Self> {
        // Stop-gradient: only the inner tensors of the teacher are used.
        let teacher = match teacher {
            TeacherLogits::Logits(t) => TeacherLogits::Logits(t.primitive),
            TeacherLogits::TopK { ids, log_probs } => TeacherLogits::TopK {
                ids,
                log_probs: log_probs.primitive,
            },
        };
        let forward = |student| B::divergence_rows(student, teacher.clone(), rows.clone(), options);
        match DivergenceBackward
            .prepare::<C>([student.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = forward(student.primitive.clone());
                prep.finish(
                    (student.primitive, teacher.clone(), rows.clone(), options),
                    output,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(student.primitive)),
        }
    }

    fn token_log_probs(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: Rows,
        temperature: f64,
        chunk_size: usize,
    ) -> FloatTensor<Self> {
        let forward =
            |logits| B::token_log_probs(logits, ids.clone(), rows.clone(), temperature, chunk_size);
        match TokenLogProbBackward
            .prepare::<C>([logits.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = forward(logits.primitive.clone());
                prep.finish(
                    (
                        logits.primitive,
                        ids.clone(),
                        rows.clone(),
                        temperature,
                        chunk_size,
                    ),
                    output,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(logits.primitive)),
        }
    }
}
