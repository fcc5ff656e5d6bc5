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
//! the student's. How the gradient is formed depends on what is known in the forward:
//!
//! - `W` frozen (LoRA, or a head that does not train): the forward also forms
//!   `u = ∂value/∂z · W` per row, `[N, d]` (each row's value depends on its own logits only,
//!   so its gradient is `g · u`): as many products as the unfused head.
//! - `W` trains and the caller expects the loss to be linear in the values, `g = s · c` for
//!   weights `c` it gives up front and one scalar `s` (a token-mean NLL or divergence): the
//!   forward forms `∂/∂h` and `∂/∂W` for `g = c` block by block (as Liger's fused linear
//!   losses do), and the backward scales them by `s` after checking that the upstream
//!   gradient is `s · c` ([`proportion`]). As many products as the unfused head.
//! - Otherwise (or when that check fails) the backward forms each block's logits again (the
//!   student's, and the teacher's when it is given by hidden states): one product more per
//!   block (two with a teacher given by hidden states).
//!
//! Every way holds `O(rows · V)` logits at a time and no `[N, V]` tensor.

use burn::tensor::{Int, Tensor, backend::Backend, ops::FloatTensor, ops::IntTensor};

// An arrow back up, by design: `DivergenceBackend`'s fused-head methods default to the
// functions of this file, which run the trait's own kernels on each block of logits.
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

/// What the caller of a fused head may add to its inputs (all optional: `Default` is none).
pub struct HeadOptions<'a, B: Backend> {
    /// Shown each block of logits the forward forms (as constants), in order: the
    /// diagnostics of a step (entropies, top-k overlap) without forming the logits once more.
    pub observe: Option<&'a mut dyn FnMut(LogitBlock<B>)>,
    /// Weights `c` `[B, T]` when the loss is known before the forward to be
    /// `s · Σ_{b,t} c_{b,t} value_{b,t}` for one scalar `s`, plus terms that do not read these
    /// values (a token-mean NLL or divergence: `c` = the mask). A head that trains (a tied
    /// embedding) then forms its gradients in the forward, with no second pass over the
    /// logits in the backward. The backward checks the guess: when the upstream gradient is
    /// not `s · c`, it forms the logits again and the gradient is exact either way.
    pub linear: Option<Tensor<B, 2>>,
}

impl<B: Backend> Default for HeadOptions<'_, B> {
    fn default() -> Self {
        Self {
            observe: None,
            linear: None,
        }
    }
}

/// The weights of [`HeadOptions::linear`] `[batch, time]` at the selected `rows`, flat
/// `[rows.count(batch·time)]`; an error when their shape is not `shape`.
pub(crate) fn linear_rows<B: Backend>(
    weights: Tensor<B, 2>,
    rows: &Rows,
    shape: [usize; 2],
) -> crate::error::Result<FloatTensor<B>> {
    crate::check::same_shape("linear weights", &shape, &weights.dims())?;
    let n = shape[0] * shape[1];
    let flat = rows.of(weights.reshape([n, 1]));
    Ok(primitive(flat.reshape([rows.count(n)])))
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
pub(crate) struct HeadScores<B: DivergenceBackend> {
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

impl<B: DivergenceBackend> HeadScores<B> {
    /// The blocks over the selected rows of `total`.
    fn blocks(&self, total: usize) -> Vec<Chunk> {
        chunks(&self.rows, total, self.block_rows.max(1))
    }
}

/// Forms each block's logits, shows them to `observe`, evaluates the block's values and hands
/// the block, its loss, logits and values to `each`; returns the values of every block,
/// `[rows.count(N)]`.
fn over_blocks<B: DivergenceBackend>(
    hidden: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    scored: &HeadScores<B>,
    mut observe: Option<&mut BlockObserver<'_, B>>,
    mut each: impl FnMut(&Chunk, &RowLoss<B>, Tensor<B, 2>, FloatTensor<B>),
) -> FloatTensor<B> {
    let mut values = Vec::new();
    for block in scored.blocks(hidden.dims()[0]) {
        let z = block_logits(&block, hidden, weight);
        let loss = scored.loss.of_block(&block);
        if let Some(observe) = observe.as_deref_mut() {
            observe(&block.rows(), primitive(z.clone()), loss.teacher_logits());
        }
        let v = loss.values(z.clone());
        values.push(float::<B, 1>(v.clone()));
        each(&block, &loss, z, v);
    }
    primitive(Tensor::cat(values, 0))
}

/// The loss at each selected row, `[rows.count(N)]`, each block's logits shown to `observe`;
/// with `unit`, also `u = ∂value/∂h` per selected row, `[rows.count(N), d]`.
pub(crate) fn forward<B: DivergenceBackend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    scored: &HeadScores<B>,
    unit: bool,
    observe: Option<&mut BlockObserver<'_, B>>,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let hidden = float::<B, 2>(hidden);
    let weight = float::<B, 2>(weight);
    let mut units = Vec::new();
    let values = over_blocks(&hidden, &weight, scored, observe, |block, loss, z, v| {
        if unit {
            let ones = primitive(Tensor::<B, 1>::ones([block.len], &hidden.device()));
            units.push(loss.gradient(z, v, ones).matmul(weight.clone()));
        }
    });
    (values, unit.then(|| primitive(Tensor::cat(units, 0))))
}

/// The gradients of a loss linear in the values, formed in the forward.
#[derive(Debug, Clone)]
pub(crate) struct LinearGradients<B: Backend> {
    /// The values at the selected rows, `[rows.count(N)]`.
    pub values: FloatTensor<B>,
    /// `Σ_r c_r ∂value_r/∂h`, `[N, d]`.
    pub hidden: FloatTensor<B>,
    /// `Σ_r c_r ∂value_r/∂W`, `[V, d]`.
    pub weight: FloatTensor<B>,
}

/// The values at the selected rows and the gradients (to `h` and `W`) of
/// `L = Σ_r c_r value_r` for weights `c` `[rows.count(N)]`, formed block by block in one pass
/// over the logits, each block shown to `observe`.
pub(crate) fn forward_linear<B: DivergenceBackend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    scored: &HeadScores<B>,
    weights: FloatTensor<B>,
    observe: Option<&mut BlockObserver<'_, B>>,
) -> LinearGradients<B> {
    let hidden = float::<B, 2>(hidden);
    let weight = float::<B, 2>(weight);
    let weights = float::<B, 1>(weights);
    let mut gradients = Gradients::zeros(&hidden, &weight, true);
    let values = over_blocks(&hidden, &weight, scored, observe, |block, loss, z, v| {
        let c = weights
            .clone()
            .slice(block.out_start..block.out_start + block.len);
        let dz = loss.gradient(z, v, primitive(c));
        gradients.add(block, dz, &hidden, &weight);
    });
    LinearGradients {
        values,
        hidden: primitive(gradients.hidden),
        weight: primitive(gradients.weight.expect("formed with W's gradient")),
    }
}

/// `s` when the upstream gradient `g` is `s · c` for the weights `c` the forward used (every
/// `|g_r − s·c_r| ≤ 10⁻⁵ · max |g|`, with `s` the least-squares fit `Σ g c / Σ c²`), else
/// `None`. The gradient scaled from the forward's then differs from the exact one by at most
/// that 10⁻⁵ relative, below the f32 rounding of the products that form it.
pub(crate) fn proportion(g: &[f32], c: &[f32]) -> Option<f32> {
    if g.len() != c.len() {
        return None;
    }
    let (gc, cc) = g
        .iter()
        .zip(c)
        .fold((0.0f64, 0.0f64), |(gc, cc), (&g, &c)| {
            (gc + g as f64 * c as f64, cc + c as f64 * c as f64)
        });
    let s = if cc > 0.0 { gc / cc } else { 0.0 };
    let scale = g.iter().fold(0.0f64, |m, &g| m.max((g as f64).abs()));
    let fits = g
        .iter()
        .zip(c)
        .all(|(&g, &c)| (g as f64 - s * c as f64).abs() <= 1e-5 * scale);
    fits.then_some(s as f32)
}

/// `∂L/∂h` and `∂L/∂W` summed block by block.
struct Gradients<B: Backend> {
    hidden: Tensor<B, 2>,
    weight: Option<Tensor<B, 2>>,
}

impl<B: DivergenceBackend> Gradients<B> {
    fn zeros(hidden: &Tensor<B, 2>, weight: &Tensor<B, 2>, weight_grad: bool) -> Self {
        let device = hidden.device();
        Self {
            hidden: Tensor::zeros(hidden.dims(), &device),
            weight: weight_grad.then(|| Tensor::zeros(weight.dims(), &device)),
        }
    }

    /// Adds a block's share for its logits' gradient `dz` `[rows, V]`: `dz·W` at its rows of
    /// `∂L/∂h`, `dzᵀ·h_b` to `∂L/∂W`.
    fn add(
        &mut self,
        block: &Chunk,
        dz: Tensor<B, 2>,
        hidden: &Tensor<B, 2>,
        weight: &Tensor<B, 2>,
    ) {
        if let Some(sum) = self.weight.take() {
            self.weight = Some(sum + dz.clone().transpose().matmul(block.take(hidden.clone())));
        }
        self.hidden = block.put(self.hidden.clone(), dz.matmul(weight.clone()));
    }
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
    scored: &HeadScores<B>,
    values: FloatTensor<B>,
    grad_out: FloatTensor<B>,
    weight_grad: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let hidden = float::<B, 2>(hidden);
    let weight = float::<B, 2>(weight);
    let values = float::<B, 1>(values);
    let grad_out = float::<B, 1>(grad_out);
    let mut gradients = Gradients::zeros(&hidden, &weight, weight_grad);
    for block in scored.blocks(hidden.dims()[0]) {
        let z = block_logits(&block, &hidden, &weight);
        let outputs = block.out_start..block.out_start + block.len;
        let dz = scored.loss.of_block(&block).gradient(
            z,
            primitive(values.clone().slice(outputs.clone())),
            primitive(grad_out.clone().slice(outputs)),
        );
        gradients.add(&block, dz, &hidden, &weight);
    }
    (primitive(gradients.hidden), gradients.weight.map(primitive))
}

#[cfg(test)]
mod tests {
    use super::proportion;

    #[test]
    fn proportion_fits_one_scalar_or_refuses() {
        assert_eq!(proportion(&[2.0, -4.0, 0.0], &[1.0, -2.0, 0.0]), Some(2.0));
        assert_eq!(proportion(&[-0.5, -0.5], &[1.0, 1.0]), Some(-0.5));
        assert_eq!(proportion(&[0.0, 0.0], &[1.0, 3.0]), Some(0.0));
        assert_eq!(proportion(&[0.0, 0.0], &[0.0, 0.0]), Some(0.0));
        // A zero weight where the loss sends a gradient, weights of another pattern, a
        // clipped token (zero gradient where the weight is not), other lengths.
        assert_eq!(proportion(&[1.0, 1.0], &[1.0, 0.0]), None);
        assert_eq!(proportion(&[1.0, 2.0], &[2.0, 1.0]), None);
        assert_eq!(proportion(&[1.0, 0.0, 1.0], &[1.0, 1.0, 1.0]), None);
        assert_eq!(proportion(&[1.0], &[1.0, 1.0]), None);
        // Rounding below 10⁻⁵ of the largest gradient fits; 10⁻⁴ does not.
        assert!(proportion(&[1.0, 1.000_001], &[1.0, 1.0]).is_some());
        assert!(proportion(&[1.0, 1.000_1], &[1.0, 1.0]).is_none());
    }
}
