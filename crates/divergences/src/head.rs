//! The output head fused with the token log-probability: `log softmax(h·Wᵀ / τ)[id]` from the
//! final hidden states `h` `[N, d]` and the head `W` `[V, d]`, with the logits formed a block
//! of rows at a time and never whole, in the forward or the backward.
//!
//! Per row, with `z = h·Wᵀ`, `p = softmax(z / τ)` and upstream gradient `g`:
//!
//! ```text
//! value = z_id / τ − log Σ_v exp(z_v / τ)
//! ∂/∂z  = g · (onehot(id) − p) / τ          (the row kernels' closed form)
//! ∂/∂h  = (∂/∂z) · W                        ∂/∂W = Σ_rows (∂/∂z)ᵀ · h
//! ```
//!
//! When `W` takes a gradient (full fine-tuning of a tied embedding), the backward forms each
//! block's logits again: one more `[rows, d] × [d, V]` product per block in exchange for no
//! `[N, V]` tensor. When `W` is frozen (LoRA, or a head that does not train), the forward also
//! forms `u = (onehot(id) − p) / τ · W` per row, `[N, d]`, and the backward is `g · u`: as many
//! products as the unfused head, and `O(rows · V)` memory.

use burn::tensor::{Int, Tensor, ops::FloatTensor, ops::IntTensor};

use crate::backend::DivergenceBackend;
use crate::buckets::{float, primitive};
use crate::chunks::{Chunk, Rows, chunks};

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

/// What the fused head scores: the ids `[N]`, the selected rows, the temperature and the rows
/// per block.
#[derive(Debug, Clone)]
pub(crate) struct Scored<B: DivergenceBackend> {
    pub ids: IntTensor<B>,
    pub rows: Rows,
    pub temperature: f64,
    pub block_rows: usize,
}

impl<B: DivergenceBackend> Scored<B> {
    /// The blocks over the selected rows of `total`.
    fn blocks(&self, total: usize) -> Vec<Chunk> {
        chunks(&self.rows, total, self.block_rows.max(1))
    }

    /// A block's values from its logits `z` `[rows, V]`: `log softmax(z / τ)[id]`.
    fn values(&self, block: &Chunk, z: Tensor<B, 2>) -> FloatTensor<B> {
        B::token_log_probs(
            primitive(z),
            self.block_ids(block),
            &Rows::All,
            self.temperature,
            block.len,
        )
    }

    /// A block's `g · (onehot(id) − p) / τ` `[rows, V]` from its logits, values and upstream `g`.
    fn gradient(
        &self,
        block: &Chunk,
        z: Tensor<B, 2>,
        values: FloatTensor<B>,
        grad_out: FloatTensor<B>,
    ) -> Tensor<B, 2> {
        float(B::token_log_probs_backward(
            primitive(z),
            self.block_ids(block),
            &Rows::All,
            self.temperature,
            block.len,
            values,
            grad_out,
        ))
    }

    fn block_ids(&self, block: &Chunk) -> IntTensor<B> {
        block
            .take(Tensor::<B, 1, Int>::from_primitive(self.ids.clone()))
            .into_primitive()
    }
}

/// `log softmax(h·Wᵀ / τ)[id]` at each selected row, `[rows.count(N)]`; with `unit`, also
/// `u = ∂value/∂h` per selected row, `[rows.count(N), d]`.
pub(crate) fn forward<B: DivergenceBackend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    scored: &Scored<B>,
    unit: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let hidden = float::<B, 2>(hidden);
    let weight = float::<B, 2>(weight);
    let mut values = Vec::new();
    let mut units = Vec::new();
    for block in scored.blocks(hidden.dims()[0]) {
        let z = block_logits(&block, &hidden, &weight);
        let v = scored.values(&block, z.clone());
        if unit {
            let ones = primitive(Tensor::<B, 1>::ones([block.len], &hidden.device()));
            let dz = scored.gradient(&block, z, v.clone(), ones);
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
        let dz = scored.gradient(
            &block,
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
