//! The backend extension that evaluates divergences row by row, with a closed-form backward.
//!
//! Each op has a forward and a backward hook. Their defaults ([`crate::generic`]) evaluate
//! chunk by chunk with burn tensor ops; `Flex` overrides them with fused CPU kernels. On
//! `Autodiff<B>` the forward runs on `B` and records a single graph node whose backward calls
//! `B`'s backward hook, so neither pass holds more than `O(chunk · V)` beyond the logits and
//! their gradient. The teacher never receives a gradient (stop-gradient), even when it shares
//! the student's weights or graph.

use burn::backend::Autodiff;
use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ops::FloatTensor, ops::IntTensor};

use crate::buckets::{TeacherLogits, float};
use crate::chunks::Rows;
use crate::generic;
use crate::head::{self, BlockObserver};
use crate::host_values;
use crate::kind::DivergenceOptions;
use crate::row_summary::RowSummary;

/// A backend opd trains on, `TrainingBackend` in one name: burn's autodiff
/// over a backend with opd's divergence kernels (`Autodiff<Flex>`, `Autodiff<Wgpu>`,
/// `Autodiff<Cuda>`). Every backend with both is one.
pub trait TrainingBackend: burn::tensor::backend::AutodiffBackend + DivergenceBackend {}

impl<B: burn::tensor::backend::AutodiffBackend + DivergenceBackend> TrainingBackend for B {}

/// A backend that can evaluate divergences over logits row by row.
///
/// Every method has a portable default built from burn tensor ops: a backend opts in with an
/// empty `impl DivergenceBackend for MyBackend {}` and may override the hooks with fused
/// kernels. burn's `Flex` (fused CPU kernels), `Wgpu` and `Cuda` (by feature) and
/// `Autodiff<B>` of each implement it here. Inputs are validated by the public functions of
/// this crate, not here.
pub trait DivergenceBackend: Backend {
    /// Divergence at each selected row of student logits `[N, V]` against the teacher:
    /// output `[rows.count(N)]`, `D(p_T(· | row) ‖ p_S(· | row))` per `options`.
    fn divergence_rows(
        student: FloatTensor<Self>,
        teacher: &TeacherLogits<Self>,
        rows: &Rows,
        options: DivergenceOptions,
    ) -> FloatTensor<Self> {
        generic::divergence_rows::<Self>(student, teacher, rows, options)
    }

    /// The backward of [`DivergenceBackend::divergence_rows`]: `Σ_r g_r ∂D_r/∂z_S`, `[N, V]`,
    /// for the upstream gradient `g` of shape `[rows.count(N)]` (zero on unselected rows).
    fn divergence_rows_backward(
        student: FloatTensor<Self>,
        teacher: &TeacherLogits<Self>,
        rows: &Rows,
        options: DivergenceOptions,
        grad_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        generic::divergence_rows_backward::<Self>(student, teacher, rows, options, grad_out)
    }

    /// `log softmax(z / τ)[id]` at each selected row of logits `[N, V]` with ids `[N]`:
    /// output `[rows.count(N)]`.
    fn token_log_probs(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: &Rows,
        temperature: f64,
        chunk_size: usize,
    ) -> FloatTensor<Self> {
        generic::token_log_probs::<Self>(logits, ids, rows, temperature, chunk_size)
    }

    /// The backward of [`DivergenceBackend::token_log_probs`]: `Σ_r g_r (onehot(id_r) − p_r) / τ`.
    /// `values` is the forward's output, from which a kernel may recover each row's
    /// log-normalizer (`lse = z_id / τ − value`) instead of recomputing it.
    fn token_log_probs_backward(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: &Rows,
        temperature: f64,
        chunk_size: usize,
        values: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let _ = values;
        generic::token_log_probs_backward::<Self>(
            logits,
            ids,
            rows,
            temperature,
            chunk_size,
            grad_out,
        )
    }

    /// `log softmax(h·Wᵀ / τ)[id]` at each selected row of final hidden states `h` `[N, d]`
    /// with the output head `W` `[V, d]` and ids `[N]`: output `[rows.count(N)]`. The logits
    /// are formed `block_rows` selected rows at a time, in the forward and the backward
    /// (`O(block_rows · V)` memory), on every backend through its own matmul and
    /// [`DivergenceBackend::token_log_probs`]; `observe` sees each block's logits. With
    /// `linear`, weights `c` `[rows.count(N)]` such that the loss is expected to be
    /// `s · Σ_r c_r value_r` (plus terms without these values), a head that trains forms its
    /// gradients in the forward (see [`crate::head`]). Inputs are validated by
    /// [`crate::sampled::sequence_log_probs_from_hidden`], not here.
    #[allow(clippy::too_many_arguments)]
    fn head_token_log_probs(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: &Rows,
        temperature: f64,
        block_rows: usize,
        observe: Option<&mut BlockObserver<'_, Self>>,
        linear: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let _ = linear;
        let scored = head::HeadScores {
            loss: head::RowLoss::TokenLogProb { ids, temperature },
            rows: rows.clone(),
            block_rows,
        };
        head::forward::<Self>(hidden, weight, &scored, false, observe).0
    }

    /// `D(p_T ‖ softmax(h·Wᵀ / τ))` at each selected row of final hidden states `h` `[N, d]`
    /// with the output head `W` `[V, d]` against the teacher (any of its forms, a teacher given
    /// by hidden states included): output `[rows.count(N)]`, as
    /// [`DivergenceBackend::divergence_rows`] of the logits `h·Wᵀ`, which are formed
    /// `block_rows` selected rows at a time in the forward and the backward, the teacher's
    /// next to the student's; `observe` sees each block's logits (the teacher's too), and
    /// `linear` is [`DivergenceBackend::head_token_log_probs`]'. Inputs are validated by
    /// [`crate::DistillationLoss::forward_from_hidden`], not here.
    #[allow(clippy::too_many_arguments)]
    fn head_divergence_rows(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        teacher: &TeacherLogits<Self>,
        rows: &Rows,
        options: DivergenceOptions,
        block_rows: usize,
        observe: Option<&mut BlockObserver<'_, Self>>,
        linear: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let _ = linear;
        let scored = head::HeadScores {
            loss: head::RowLoss::Divergence {
                teacher: teacher.clone(),
                options,
            },
            rows: rows.clone(),
            block_rows,
        };
        head::forward::<Self>(hidden, weight, &scored, false, observe).0
    }

    /// The entropy and top-`k` (`k ≤ V`) of `softmax(z / τ)` at every row of logits `[N, V]`,
    /// on the host: see [`crate::summarize`], which validates the inputs.
    fn summarize_rows(logits: FloatTensor<Self>, temperature: f64, k: usize) -> RowSummary {
        generic::summarize_rows::<Self>(logits, temperature, k)
    }
}

#[cfg(feature = "wgpu")]
impl DivergenceBackend for burn::backend::Wgpu {}
#[cfg(feature = "cuda")]
impl DivergenceBackend for burn::backend::Cuda {}

#[derive(Debug)]
struct DivergenceBackward;

impl<B: DivergenceBackend> Backward<B, 1> for DivergenceBackward {
    type State = (FloatTensor<B>, TeacherLogits<B>, Rows, DivergenceOptions);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(student_node)] = ops.parents else {
            return;
        };
        let (student, teacher, rows, options) = ops.state;
        let grad_out = grads.consume::<B>(&ops.node);
        let grad = B::divergence_rows_backward(student, &teacher, &rows, options, grad_out);
        grads.register::<B>(student_node.id, grad);
    }
}

#[derive(Debug)]
struct TokenLogProbBackward;

impl<B: DivergenceBackend> Backward<B, 1> for TokenLogProbBackward {
    type State = (
        FloatTensor<B>,
        IntTensor<B>,
        Rows,
        f64,
        usize,
        FloatTensor<B>,
    );

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(logits_node)] = ops.parents else {
            return;
        };
        let (logits, ids, rows, temperature, chunk_size, values) = ops.state;
        let grad_out = grads.consume::<B>(&ops.node);
        let grad = B::token_log_probs_backward(
            logits,
            ids,
            &rows,
            temperature,
            chunk_size,
            values,
            grad_out,
        );
        grads.register::<B>(logits_node.id, grad);
    }
}

/// What the fused head's backward reads.
#[derive(Debug, Clone)]
enum HeadState<B: DivergenceBackend> {
    /// `W` frozen: `u = ∂value/∂h` per selected row, from the forward.
    Unit {
        unit: FloatTensor<B>,
        rows: Rows,
        total: usize,
    },
    /// `W` trains: what forming the logits again needs.
    Recompute(Recompute<B>),
    /// `W` trains and the loss was expected to be linear in the values with weights
    /// `weights`: the gradients for `g = weights`, formed in the forward, and what forming
    /// the logits again needs when the upstream gradient is not proportional to `weights`.
    Linear {
        gradients: head::LinearGradients<B>,
        weights: FloatTensor<B>,
        recompute: Recompute<B>,
    },
}

/// What forming the fused head's logits again needs.
#[derive(Debug, Clone)]
struct Recompute<B: DivergenceBackend> {
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    scored: head::HeadScores<B>,
    values: FloatTensor<B>,
}

#[cfg(test)]
thread_local! {
    /// How many fused-head backwards on this thread formed their logits again.
    static RECOMPUTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<B: DivergenceBackend> Recompute<B> {
    fn backward(
        self,
        grad_out: FloatTensor<B>,
        weight_grad: bool,
    ) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
        #[cfg(test)]
        RECOMPUTED.with(|n| n.set(n.get() + 1));
        head::backward_recomputed::<B>(
            self.hidden,
            self.weight,
            &self.scored,
            self.values,
            grad_out,
            weight_grad,
        )
    }
}

#[derive(Debug)]
struct HeadBackward;

impl<B: DivergenceBackend> Backward<B, 2> for HeadBackward {
    type State = HeadState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [hidden_parent, weight_parent] = ops.parents;
        let grad_out = grads.consume::<B>(&ops.node);
        let (dh, dw) = match ops.state {
            HeadState::Unit { unit, rows, total } => (
                head::backward_from_unit::<B>(unit, &rows, total, grad_out),
                None,
            ),
            HeadState::Recompute(recompute) => {
                recompute.backward(grad_out, weight_parent.is_some())
            }
            HeadState::Linear {
                gradients,
                weights,
                recompute,
            } => match head::proportion(
                &host_values(float::<B, 1>(grad_out.clone())),
                &host_values(float::<B, 1>(weights)),
            ) {
                Some(s) => {
                    let scaled = |t| B::float_mul_scalar(t, s.into());
                    (scaled(gradients.hidden), Some(scaled(gradients.weight)))
                }
                None => recompute.backward(grad_out, weight_parent.is_some()),
            },
        };
        if let Some(node) = hidden_parent {
            grads.register::<B>(node.id, dh);
        }
        if let (Some(node), Some(dw)) = (weight_parent, dw) {
            grads.register::<B>(node.id, dw);
        }
    }
}

/// The teacher's inner tensors (stop-gradient: no graph reaches a teacher).
fn detached<B: DivergenceBackend, C: CheckpointStrategy>(
    teacher: &TeacherLogits<Autodiff<B, C>>,
) -> TeacherLogits<B> {
    match teacher {
        TeacherLogits::Logits(t) => TeacherLogits::Logits(t.primitive.clone()),
        TeacherLogits::TopK { ids, log_probs } => TeacherLogits::TopK {
            ids: ids.clone(),
            log_probs: log_probs.primitive.clone(),
        },
        TeacherLogits::Hidden { hidden, head } => TeacherLogits::Hidden {
            hidden: hidden.primitive.clone(),
            head: head.primitive.clone(),
        },
    }
}

/// The fused head's graph node: `loss` at the selected rows of `h·Wᵀ`, evaluated on `B`; the
/// backward reads the kept `u` when `W` is frozen, the forward's gradients when `W` trains and
/// the loss is linear in the values with the weights `linear`, and forms the blocks again
/// otherwise.
fn head_node<B: DivergenceBackend, C: CheckpointStrategy>(
    hidden: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    loss: head::RowLoss<B>,
    rows: &Rows,
    block_rows: usize,
    observe: Option<&mut BlockObserver<'_, Autodiff<B, C>>>,
    linear: Option<FloatTensor<Autodiff<B, C>>>,
) -> FloatTensor<Autodiff<B, C>> {
    let total = burn::tensor::TensorMetadata::shape(&hidden.primitive)[0];
    let weight_trains = !weight.node.requirement.is_none();
    let hidden_trains = !hidden.node.requirement.is_none();
    let scored = head::HeadScores {
        loss,
        rows: rows.clone(),
        block_rows,
    };
    // The observer sees the blocks as constants of the autodiff backend.
    let mut lifted = observe.map(|observe| {
        move |rows: &[usize], z: FloatTensor<B>, teacher: Option<FloatTensor<B>>| {
            let lift = <Autodiff<B, C> as AutodiffBackend>::from_inner;
            observe(rows, lift(z), teacher.map(lift))
        }
    });
    let observe = lifted
        .as_mut()
        .map(|observe| observe as &mut BlockObserver<'_, B>);
    let (hidden_p, weight_p) = (hidden.primitive.clone(), weight.primitive.clone());
    let (values, state) = match linear.filter(|_| weight_trains) {
        Some(weights) => {
            let weights = weights.primitive;
            let gradients = head::forward_linear::<B>(
                hidden_p.clone(),
                weight_p.clone(),
                &scored,
                weights.clone(),
                observe,
            );
            let values = gradients.values.clone();
            let recompute = Recompute {
                hidden: hidden_p,
                weight: weight_p,
                scored,
                values: values.clone(),
            };
            let state = HeadState::Linear {
                gradients,
                weights,
                recompute,
            };
            (values, state)
        }
        None => {
            let unit = !weight_trains && hidden_trains;
            let (values, unit) =
                head::forward::<B>(hidden_p.clone(), weight_p.clone(), &scored, unit, observe);
            let state = match unit {
                Some(unit) => HeadState::Unit {
                    unit,
                    rows: rows.clone(),
                    total,
                },
                None => HeadState::Recompute(Recompute {
                    hidden: hidden_p,
                    weight: weight_p,
                    scored,
                    values: values.clone(),
                }),
            };
            (values, state)
        }
    };
    match HeadBackward
        .prepare::<C>([hidden.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, values),
        OpsKind::UnTracked(prep) => prep.finish(values),
    }
}

impl<B: DivergenceBackend, C: CheckpointStrategy> DivergenceBackend for Autodiff<B, C> {
    fn summarize_rows(logits: FloatTensor<Self>, temperature: f64, k: usize) -> RowSummary {
        B::summarize_rows(logits.primitive, temperature, k)
    }

    fn head_token_log_probs(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: &Rows,
        temperature: f64,
        block_rows: usize,
        observe: Option<&mut BlockObserver<'_, Self>>,
        linear: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let loss = head::RowLoss::TokenLogProb { ids, temperature };
        head_node::<B, C>(hidden, weight, loss, rows, block_rows, observe, linear)
    }

    fn head_divergence_rows(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        teacher: &TeacherLogits<Self>,
        rows: &Rows,
        options: DivergenceOptions,
        block_rows: usize,
        observe: Option<&mut BlockObserver<'_, Self>>,
        linear: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let loss = head::RowLoss::Divergence {
            teacher: detached(teacher),
            options,
        };
        head_node::<B, C>(hidden, weight, loss, rows, block_rows, observe, linear)
    }

    fn divergence_rows(
        student: FloatTensor<Self>,
        teacher: &TeacherLogits<Self>,
        rows: &Rows,
        options: DivergenceOptions,
    ) -> FloatTensor<Self> {
        let teacher = detached(teacher);
        let output = B::divergence_rows(student.primitive.clone(), &teacher, rows, options);
        match DivergenceBackward
            .prepare::<C>([student.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((student.primitive, teacher, rows.clone(), options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn token_log_probs(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: &Rows,
        temperature: f64,
        chunk_size: usize,
    ) -> FloatTensor<Self> {
        let output = B::token_log_probs(
            logits.primitive.clone(),
            ids.clone(),
            rows,
            temperature,
            chunk_size,
        );
        match TokenLogProbBackward
            .prepare::<C>([logits.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                (
                    logits.primitive,
                    ids,
                    rows.clone(),
                    temperature,
                    chunk_size,
                    output.clone(),
                ),
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Int, Tensor};

    use super::*;

    type A = Autodiff<Flex>;

    /// The fused NLL of 5 rows (3 selected) with a head that trains, told `linear` (or
    /// nothing), under the loss `Σ_r g_r value_r`: the gradients to `h` and `W` and whether
    /// the backward formed the logits again.
    fn run(linear: Option<[f32; 3]>, g: [f32; 3]) -> (Vec<f32>, Vec<f32>, bool) {
        let device = Default::default();
        let h = Tensor::<A, 2>::from_floats(
            [
                [0.3, -0.2],
                [0.1, 0.5],
                [-0.4, 0.2],
                [0.7, 0.1],
                [0.0, -0.6],
            ],
            &device,
        )
        .require_grad();
        let w = Tensor::<A, 2>::from_floats(
            [[0.5, 0.1], [-0.3, 0.8], [0.2, -0.7], [0.9, 0.4]],
            &device,
        )
        .require_grad();
        let ids = Tensor::<A, 1, Int>::from_ints([0, 3, 1, 2, 1], &device);
        let rows = Rows::Selected([4, 0, 2].into());
        let before = RECOMPUTED.with(|n| n.get());
        let values = Tensor::<A, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(
            A::head_token_log_probs(
                h.clone().into_primitive().tensor(),
                w.clone().into_primitive().tensor(),
                ids.into_primitive(),
                &rows,
                1.0,
                2,
                None,
                linear.map(|c| {
                    Tensor::<A, 1>::from_floats(c, &device)
                        .into_primitive()
                        .tensor()
                }),
            ),
        ));
        let grads = (values * Tensor::from_floats(g, &device)).sum().backward();
        let recomputed = RECOMPUTED.with(|n| n.get()) > before;
        (
            host_values(h.grad(&grads).unwrap()),
            host_values(w.grad(&grads).unwrap()),
            recomputed,
        )
    }

    #[test]
    fn a_right_guess_skips_the_second_pass_and_a_wrong_one_takes_it() {
        let g = [0.5, -1.0, 2.0];
        let (dh, dw, recomputed) = run(None, g);
        assert!(
            recomputed,
            "told nothing, the backward forms the logits again"
        );
        // `g = −0.5 · c`.
        let (dh_right, dw_right, recomputed) = run(Some([-1.0, 2.0, -4.0]), g);
        assert!(!recomputed, "a right guess needs no second pass");
        let (dh_wrong, dw_wrong, recomputed) = run(Some([1.0, 1.0, 1.0]), g);
        assert!(recomputed, "a wrong guess falls back to the second pass");
        for (what, got, want) in [
            ("∂/∂h right", &dh_right, &dh),
            ("∂/∂W right", &dw_right, &dw),
            ("∂/∂h wrong", &dh_wrong, &dh),
            ("∂/∂W wrong", &dw_wrong, &dw),
        ] {
            for (a, b) in got.iter().zip(want.iter()) {
                assert!(
                    (a - b).abs() <= 1e-6 + 1e-5 * b.abs(),
                    "{what}: {got:?} vs {want:?}"
                );
            }
        }
    }
}
