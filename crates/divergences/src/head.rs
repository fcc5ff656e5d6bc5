//! The output head fused with a per-row loss: the token log-probability
//! `log softmax(h·Wᵀ / τ)[id]` or a divergence `D(p_T ‖ softmax(h·Wᵀ / τ))`, from the final
//! hidden states `h` `[N, d]` and the head `W` `[V, d]`, with the logits formed a block of rows
//! at a time and never whole, in the forward or the backward.
//!
//! Per row, with `z = h·Wᵀ` and upstream gradient `g`:
//!
//! ```text
//! token:       value = z_id / τ − log Σ_v exp(z_v / τ)     ∂/∂z = g · (onehot(id) − p) / τ
//! divergence:  value = D(p_T ‖ p_S)                         ∂/∂z = g · ∂D/∂z  (the row kernels')
//! ∂/∂h = (∂/∂z) · W                                         ∂/∂W = Σ_rows (∂/∂z)ᵀ · h
//! ```
//!
//! A teacher given by its own hidden states and head has its block of logits formed next to
//! the student's. When `W` takes a gradient (full fine-tuning of a tied embedding), the
//! backward forms each block's logits again (the student's, and the teacher's when it is given
//! by hidden states): more products in exchange for no `[N, V]` tensor. When `W` is frozen
//! (LoRA, or a head that does not train), the forward also forms `u = ∂value/∂z · W` per row,
//! `[N, d]` (each row's value depends on its own logits only, so its gradient is `g · u`): as
//! many products as the unfused head, and `O(rows · V)` memory.

use burn::tensor::{Int, Tensor, backend::Backend, ops::FloatTensor, ops::IntTensor};

use crate::backend::DivergenceBackend;
use crate::buckets::{TeacherLogits, float, primitive};
use crate::chunks::{Chunk, Rows, chunks};
use crate::kind::DivergenceOptions;

/// Sees each block of logits the fused head forms in its forward, without graph: the indices
/// of the block's rows, the student's logits `[rows, V]` and the teacher's, when the teacher
/// has full logits (given, or formed from its hidden states).
pub type BlockObserver<'a, B> = dyn FnMut(&[usize], FloatTensor<B>, Option<FloatTensor<B>>) + 'a;

/// A block of logits a fused head formed in its forward, as constants: what the
/// `_observed` entry points show their observer, e.g. for entropies and top-k diagnostics
/// that would otherwise form the logits once more.
#[derive(Debug, Clone)]
pub struct LogitBlock<B: Backend> {
    /// The flat positions `b·T + t` of the block's rows.
    pub positions: Vec<usize>,
    /// The student's logits `[rows, V]`.
    pub student: Tensor<B, 2>,
    /// The teacher's logits `[rows, V]`, when the loss has them (a divergence to full logits
    /// or to a teacher given by its hidden states).
    pub teacher: Option<Tensor<B, 2>>,
}

/// Adapts a [`LogitBlock`] observer to the backend hooks' [`BlockObserver`].
pub(crate) fn lifted<B: Backend>(
    observe: &mut dyn FnMut(LogitBlock<B>),
) -> impl FnMut(&[usize], FloatTensor<B>, Option<FloatTensor<B>>) + '_ {
    move |rows, student, teacher| {
        observe(LogitBlock {
            positions: rows.to_vec(),
            student: float(student),
            teacher: teacher.map(float),
        })
    }
}

/// Logit elements one block holds: 32 Mi f32 (128 MB): 682 rows of SmolLM2's 49,152-token
/// vocabulary, 220 of Qwen3's 151,936. Blocks of this size keep the head's products large
/// enough that packing `W` once per block costs a few percent of the product.
const BLOCK_ELEMENTS: usize = 1 << 25;

/// Rows of `h` per block for a vocabulary of `vocab`.
pub(crate) fn rows_per_block(vocab: usize) -> usize {
    (BLOCK_ELEMENTS / vocab.max(1)).max(1)
}

/// One block's logits `z = h_b·Wᵀ` `[rows, V]`.
fn block_logits<B: DivergenceBackend>(
    block: &Chunk,
    hidden: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
) -> Tensor<B, 2> {
    block
        .take(hidden.clone())
        .matmul(weight.clone().transpose())
}

/// What the fused head evaluates on each row's logits `z`.
#[derive(Debug, Clone)]
pub(crate) enum RowLoss<B: DivergenceBackend> {
    /// `log softmax(z / τ)[id]` for ids `[N]`.
    TokenLogProb { ids: IntTensor<B>, temperature: f64 },
    /// `D(p_T ‖ softmax(z / τ))` against the teacher's rows, per `options`.
    Divergence {
        teacher: TeacherLogits<B>,
        options: DivergenceOptions,
    },
}

/// What the fused head scores: the per-row loss, the selected rows and the rows per block.
#[derive(Debug, Clone)]
pub(crate) struct Scored<B: DivergenceBackend> {
    pub loss: RowLoss<B>,
    pub rows: Rows,
    pub block_rows: usize,
}

impl<B: DivergenceBackend> RowLoss<B> {
    /// The teacher's full logits of a block's loss, when it has them.
    fn teacher_logits(&self) -> Option<FloatTensor<B>> {
        match self {
            Self::Divergence {
                teacher: TeacherLogits::Logits(t),
                ..
            } => Some(t.clone()),
            _ => None,
        }
    }

    /// The loss on the rows of `block` only: their ids, or their teacher rows (a teacher
    /// given by hidden states is projected here, once per block).
    fn of_block(&self, block: &Chunk) -> Self {
        match self {
            Self::TokenLogProb { ids, temperature } => Self::TokenLogProb {
                ids: block
                    .take(Tensor::<B, 1, Int>::from_primitive(ids.clone()))
                    .into_primitive(),
                temperature: *temperature,
            },
            Self::Divergence { teacher, options } => Self::Divergence {
                teacher: block.teacher(teacher).into_logits(),
                options: *options,
            },
        }
    }

    /// The values `[rows]` at every row of logits `z` `[rows, V]`.
    fn values(&self, z: Tensor<B, 2>) -> FloatTensor<B> {
        let rows = z.dims()[0];
        match self {
            Self::TokenLogProb { ids, temperature } => {
                B::token_log_probs(primitive(z), ids.clone(), &Rows::All, *temperature, rows)
            }
            Self::Divergence { teacher, options } => {
                B::divergence_rows(primitive(z), teacher, &Rows::All, *options)
            }
        }
    }

    /// `g · ∂value/∂z` `[rows, V]` from the logits, their values and upstream `g`.
    fn gradient(
        &self,
        z: Tensor<B, 2>,
        values: FloatTensor<B>,
        grad_out: FloatTensor<B>,
    ) -> Tensor<B, 2> {
        let rows = z.dims()[0];
        float(match self {
            Self::TokenLogProb { ids, temperature } => B::token_log_probs_backward(
                primitive(z),
                ids.clone(),
                &Rows::All,
                *temperature,
                rows,
                values,
                grad_out,
            ),
            Self::Divergence { teacher, options } => {
                B::divergence_rows_backward(primitive(z), teacher, &Rows::All, *options, grad_out)
            }
        })
    }
}

impl<B: DivergenceBackend> Scored<B> {
    /// The blocks over the selected rows of `total`.
    fn blocks(&self, total: usize) -> Vec<Chunk> {
        chunks(&self.rows, total, self.block_rows.max(1))
    }
}

/// The loss at each selected row, `[rows.count(N)]`, each block's logits shown to `observe`;
/// with `unit`, also
/// `u = ∂value/∂h` per selected row, `[rows.count(N), d]`.
pub(crate) fn forward<B: DivergenceBackend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    scored: &Scored<B>,
    unit: bool,
    mut observe: Option<&mut BlockObserver<'_, B>>,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let hidden = float::<B, 2>(hidden);
    let weight = float::<B, 2>(weight);
    let mut values = Vec::new();
    let mut units = Vec::new();
    for block in scored.blocks(hidden.dims()[0]) {
        let z = block_logits(&block, &hidden, &weight);
        let loss = scored.loss.of_block(&block);
        if let Some(observe) = observe.as_deref_mut() {
            observe(&block.rows(), primitive(z.clone()), loss.teacher_logits());
        }
        let v = loss.values(z.clone());
        if unit {
            let ones = primitive(Tensor::<B, 1>::ones([block.len], &hidden.device()));
            let dz = loss.gradient(z, v.clone(), ones);
            units.push(dz.matmul(weight.clone()));
        }
        values.push(float::<B, 1>(v));
    }
    let values = primitive(Tensor::cat(values, 0));
    (values, unit.then(|| primitive(Tensor::cat(units, 0))))
}

/// The backward when the forward kept `u` (frozen `W`): `∂L/∂h` `[N, d]`, `g_r · u_r` at the
/// selected rows and zero elsewhere.
pub(crate) fn backward_from_unit<B: DivergenceBackend>(
    unit: FloatTensor<B>,
    rows: &Rows,
    total: usize,
    grad_out: FloatTensor<B>,
) -> FloatTensor<B> {
    let unit = float::<B, 2>(unit);
    let [count, d] = unit.dims();
    let scaled = unit * float::<B, 1>(grad_out).unsqueeze_dim(1);
    let zeros = Tensor::<B, 2>::zeros([total, d], &scaled.device());
    // One chunk covers every selected row.
    let placed = chunks(rows, total, count.max(1))
        .iter()
        .fold(zeros, |dh, all| all.put(dh, scaled.clone()));
    primitive(placed)
}

/// The backward that forms each block's logits again: `∂L/∂h` `[N, d]` and, when
/// `weight_grad`, `∂L/∂W` `[V, d]`.
pub(crate) fn backward_recomputed<B: DivergenceBackend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    scored: &Scored<B>,
    values: FloatTensor<B>,
    grad_out: FloatTensor<B>,
    weight_grad: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let hidden = float::<B, 2>(hidden);
    let weight = float::<B, 2>(weight);
    let values = float::<B, 1>(values);
    let grad_out = float::<B, 1>(grad_out);
    let ([total, d], [vocab, _]) = (hidden.dims(), weight.dims());
    let device = hidden.device();
    let mut dh = Tensor::<B, 2>::zeros([total, d], &device);
    let mut dw = weight_grad.then(|| Tensor::<B, 2>::zeros([vocab, d], &device));
    for block in scored.blocks(total) {
        let z = block_logits(&block, &hidden, &weight);
        let outputs = block.out_start..block.out_start + block.len;
        let dz = scored.loss.of_block(&block).gradient(
            z,
            primitive(values.clone().slice(outputs.clone())),
            primitive(grad_out.clone().slice(outputs)),
        );
        if let Some(sum) = dw.take() {
            dw = Some(sum + dz.clone().transpose().matmul(block.take(hidden.clone())));
        }
        dh = block.put(dh, dz.matmul(weight.clone()));
    }
    (primitive(dh), dw.map(primitive))
}
