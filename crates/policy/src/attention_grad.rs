//! Grouped-query attention of the training forward on the CPU (`Autodiff<Flex>`, f32) as one
//! graph node with a closed-form backward that keeps no `[B, H, T, T]` tensor.
//!
//! The forward is [`crate::attention_blocks::forward`] (shared with prefill and teacher
//! scoring); this file is its graph node and the backward.
//!
//! burn's autodiff attention keeps the scores, the softmax and the mask of every layer for the
//! backward (about 7 GB for SmolLM2 at B = 8, T = 512). Here the forward keeps only what it
//! was given, its output and the log-sum-exp `L` of each query; the backward recomputes the
//! probabilities one row `b` and head `h` at a time, in blocks of query rows (flash
//! attention's recomputation, with each block's products through the `gemm` crate):
//!
//! ```text
//! S = Q Kᵀ / √hd (visible keys only: the SlotLayout rule)     P = exp(S − L)     O = P V
//! D_t = Σ_d dO_td O_td      dV += Pᵀ dO      dP = dO Vᵀ      dS = P ∘ (dP − D)
//! dQ = dS K / √hd           dK += dSᵀ Q / √hd
//! ```
//!
//! Memory beyond the inputs and outputs: `L` (`B·H·T` floats) and one `T × T` block per
//! thread. Blocks of query rows see only keys up to their last row, so the masked upper
//! triangle is not computed. It runs for a block of `T` new tokens with no cached slots
//! (`layout.start = 0`), which is the training forward; anything else takes burn's ops.

use std::ops::Range;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::TensorData;
use opd_divergences::fast_exp::exp;
use rayon::prelude::*;

use crate::attention_blocks::{Dims, Heads, View, matmul, visible};
use crate::flex_tensor::{flex_values, from_autodiff_flex, to_autodiff_flex};
use crate::kv_cache::SlotLayout;

/// Query rows per block of the score matrix.
const BLOCK: usize = 64;

/// The units of parallel work of the backward: each row `b` and key/value head, which owns
/// its `G` query heads and its keys' and values' gradients.
fn tasks(dims: &Dims) -> Vec<(usize, usize)> {
    (0..dims.batch)
        .flat_map(|b| (0..dims.kv_heads).map(move |kv| (b, kv)))
        .collect()
}

/// What the backward needs: the inputs (shared storage, not copies), the output and `L`.
#[derive(Debug, Clone)]
struct Saved {
    dims: Dims,
    padding: Vec<usize>,
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Vec<f32>,
}

/// Row blocks `[r0, r1)` of the `T` query rows.
fn blocks(len: usize) -> impl Iterator<Item = Range<usize>> {
    (0..len)
        .step_by(BLOCK)
        .map(move |r0| r0..(r0 + BLOCK).min(len))
}

/// Backward: `dQ` `[B, H, T, hd]`, `dK` and `dV` `[B, KV, T, hd]` for `dO` `[B, T, H·hd]`.
fn backward(saved: &Saved, grad_out: &[f32]) -> [Vec<f32>; 3] {
    let dims = saved.dims;
    let Dims {
        batch,
        heads,
        kv_heads,
        len,
        head_dim: hd,
    } = dims;
    let group = dims.group();
    let (q, k, v, out) = (
        flex_values(&saved.q),
        flex_values(&saved.k),
        flex_values(&saved.v),
        flex_values(&saved.out),
    );
    let scale = dims.scale();
    let row = heads * hd; // row stride of O and dO
    let tasks = tasks(&dims);
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(b, kv)| {
            let kv_at = (b * kv_heads + kv) * len * hd;
            let pad = saved.padding[b];
            let mut p = vec![0.0f32; BLOCK * len];
            let mut dp = vec![0.0f32; BLOCK * len];
            let mut dq = vec![0.0f32; group * len * hd];
            let (mut dk, mut dv) = (vec![0.0f32; len * hd], vec![0.0f32; len * hd]);
            for g in 0..group {
                let h = kv * group + g;
                let q_at = (b * heads + h) * len * hd;
                let lse = &saved.lse[(b * heads + h) * len..][..len];
                for rows in blocks(len) {
                    let (m, keys) = (rows.len(), rows.end);
                    let o_at = (b * len + rows.start) * row + h * hd;
                    let q_block = View::rows(&q, q_at + rows.start * hd, hd);
                    let d_out = View::rows(grad_out, o_at, row);
                    // P = exp(S − L) on visible keys.
                    let k_t = View::transposed(&k, kv_at, hd);
                    matmul([m, keys, hd], &mut p, len, false, q_block, k_t, scale);
                    for (i, t) in rows.clone().enumerate() {
                        let r = &mut p[i * len..i * len + keys];
                        let shown = visible(t, pad);
                        for (s, x) in r.iter_mut().enumerate() {
                            *x = if shown.contains(&s) {
                                exp(*x - lse[t])
                            } else {
                                0.0
                            };
                        }
                    }
                    // dV += Pᵀ dO.
                    let p_t = View::transposed(&p, 0, len);
                    matmul([keys, hd, m], &mut dv, hd, true, p_t, d_out, 1.0);
                    // dP = dO Vᵀ; dS = P ∘ (dP − D).
                    let v_t = View::transposed(&v, kv_at, hd);
                    matmul([m, keys, hd], &mut dp, len, false, d_out, v_t, 1.0);
                    for (i, t) in rows.clone().enumerate() {
                        let at = (b * len + t) * row + h * hd;
                        let d: f32 = grad_out[at..at + hd]
                            .iter()
                            .zip(&out[at..at + hd])
                            .map(|(a, b)| a * b)
                            .sum();
                        let (pr, dpr) = (&mut p[i * len..i * len + keys], &dp[i * len..]);
                        for (x, &y) in pr.iter_mut().zip(dpr) {
                            *x *= y - d;
                        }
                    }
                    // dQ = dS K / √hd; dK += dSᵀ Q / √hd.
                    let ds = View::rows(&p, 0, len);
                    let dq_block = &mut dq[(g * len + rows.start) * hd..];
                    let k_rows = View::rows(&k, kv_at, hd);
                    matmul([m, hd, keys], dq_block, hd, false, ds, k_rows, scale);
                    let ds_t = View::transposed(&p, 0, len);
                    matmul([keys, hd, m], &mut dk, hd, true, ds_t, q_block, scale);
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq = vec![0.0f32; batch * heads * len * hd];
    let mut dk = vec![0.0f32; batch * kv_heads * len * hd];
    let mut dv = vec![0.0f32; batch * kv_heads * len * hd];
    for (&(b, kv), (part_q, part_k, part_v)) in tasks.iter().zip(parts) {
        let q_at = (b * heads + kv * group) * len * hd;
        dq[q_at..q_at + part_q.len()].copy_from_slice(&part_q);
        let kv_at = (b * kv_heads + kv) * len * hd;
        dk[kv_at..kv_at + len * hd].copy_from_slice(&part_k);
        dv[kv_at..kv_at + len * hd].copy_from_slice(&part_v);
    }
    [dq, dk, dv]
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let saved = ops.state;
        let grad_out = grads.consume::<Flex>(&ops.node);
        let grad_out = flex_values(&grad_out);
        let Dims {
            batch,
            heads,
            kv_heads,
            len,
            head_dim,
        } = saved.dims;
        let [dq, dk, dv] = backward(&saved, &grad_out);
        let shapes = [
            [batch, heads, len, head_dim],
            [batch, kv_heads, len, head_dim],
            [batch, kv_heads, len, head_dim],
        ];
        for ((parent, grad), shape) in ops.parents.into_iter().zip([dq, dk, dv]).zip(shapes) {
            if let Some(node) = parent {
                grads
                    .register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(grad, shape)));
            }
        }
    }
}

/// The attention of [`crate::attention::grouped_attention`] as one autodiff node, when `B` is
/// `Autodiff<Flex>` with f32 values and the layout is a training forward (no cached slots);
/// `None` otherwise.
pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    layout: &SlotLayout,
) -> Option<Tensor<B, 3>> {
    let [batch, heads, len, head_dim] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    let shaped = layout.padding.len() == batch && keys == len && heads % kv_heads == 0;
    if layout.start != 0 || !shaped {
        return None;
    }
    let (q, k, v) = (
        to_autodiff_flex(q.clone())?,
        to_autodiff_flex(k.clone())?,
        to_autodiff_flex(v.clone())?,
    );
    let dims = Dims {
        batch,
        heads,
        kv_heads,
        len,
        head_dim,
    };
    let (q_values, k_values, v_values) = (
        flex_values(&q.primitive),
        flex_values(&k.primitive),
        flex_values(&v.primitive),
    );
    let contiguous = |data| Heads {
        data,
        strides: [kv_heads * len * head_dim, len * head_dim, head_dim],
    };
    let queries = Heads {
        data: &q_values,
        strides: [heads * len * head_dim, len * head_dim, head_dim],
    };
    let (out, lse) = crate::attention_blocks::forward(
        dims,
        layout,
        queries,
        contiguous(&k_values),
        contiguous(&v_values),
    );
    let out = FlexTensor::from_data(TensorData::new(out, [batch, len, heads * head_dim]));
    let node = match AttentionBackward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                dims,
                padding: layout.padding.clone(),
                q: q.primitive,
                k: k.primitive,
                v: v.primitive,
                out: out.clone(),
                lse,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    from_autodiff_flex(node)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use burn::backend::Autodiff;

    use super::*;
    // Test only, an arrow back up: the fused node checked against the generic attention.
    use crate::attention::generic_attention;

    type Ad = Autodiff<Flex>;

    /// `Σ out ∘ w` and the gradients of q, k, v, through `path`.
    fn loss_and_grads(
        path: impl Fn(Tensor<Ad, 4>, Tensor<Ad, 4>, Tensor<Ad, 4>) -> Tensor<Ad, 3>,
        [q, k, v]: &[Tensor<Flex, 4>; 3],
        w: &Tensor<Flex, 3>,
    ) -> (Vec<f32>, [Vec<f32>; 3]) {
        let [q, k, v] = [q, k, v].map(|t| Tensor::<Ad, 4>::from_inner(t.clone()).require_grad());
        let out = path(q.clone(), k.clone(), v.clone());
        let values = out.clone().inner().into_data().into_vec::<f32>().unwrap();
        let grads = (out * Tensor::from_inner(w.clone())).sum().backward();
        let grad = |t: &Tensor<Ad, 4>| t.grad(&grads).unwrap().into_data().into_vec().unwrap();
        (values, [grad(&q), grad(&k), grad(&v)])
    }

    fn inputs(
        [batch, heads, kv_heads, len, hd]: [usize; 5],
        seed: u64,
    ) -> ([Tensor<Flex, 4>; 3], Tensor<Flex, 3>) {
        let device = Default::default();
        Flex::seed(&device, seed);
        let normal = Distribution::Normal(0.0, 1.0);
        let q = Tensor::random([batch, heads, len, hd], normal, &device);
        let k = Tensor::random([batch, kv_heads, len, hd], normal, &device);
        let v = Tensor::random([batch, kv_heads, len, hd], normal, &device);
        let w = Tensor::random([batch, len, heads * hd], normal, &device);
        ([q, k, v], w)
    }

    fn close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0f32, f32::max);
        assert!(
            worst <= tolerance,
            "{what}: worst relative difference {worst}"
        );
    }

    #[test]
    fn values_and_gradients_match_burns_attention() {
        // Two blocks of query rows (T > 64), grouped heads, and left padding in one row.
        let dims = [2, 6, 2, 70, 16];
        let (qkv, w) = inputs(dims, 3);
        let layout = SlotLayout {
            padding: vec![0, 5],
            start: 0,
        };
        let fused = |q, k, v| attention(&q, &k, &v, &layout).expect("the fused path runs");
        let generic = |q, k, v| generic_attention(q, k, v, &layout);
        let (out, grads) = loss_and_grads(fused, &qkv, &w);
        let (expected, expected_grads) = loss_and_grads(generic, &qkv, &w);
        close(&out, &expected, 1e-5, "output");
        for (name, (got, want)) in ["dq", "dk", "dv"]
            .iter()
            .zip(grads.iter().zip(&expected_grads))
        {
            close(got, want, 1e-4, name);
        }
    }

    #[test]
    fn padding_and_groups_in_every_arrangement_match() {
        for (i, (dims, padding)) in [
            ([1, 2, 2, 3, 8], vec![0]),
            ([2, 4, 4, 6, 16], vec![0, 2]),
            ([2, 4, 4, 6, 16], vec![3, 0]),
            ([3, 4, 4, 5, 16], vec![0, 1, 4]),
            ([2, 4, 2, 7, 16], vec![6, 0]),
        ]
        .into_iter()
        .enumerate()
        {
            let (qkv, w) = inputs(dims, 3 + i as u64);
            let layout = SlotLayout { padding, start: 0 };
            let fused = |q, k, v| attention(&q, &k, &v, &layout).expect("the fused path runs");
            let generic = |q, k, v| generic_attention(q, k, v, &layout);
            let (out, grads) = loss_and_grads(fused, &qkv, &w);
            let (expected, expected_grads) = loss_and_grads(generic, &qkv, &w);
            close(&out, &expected, 1e-5, &format!("case {i} output"));
            for (name, (got, want)) in ["dq", "dk", "dv"]
                .iter()
                .zip(grads.iter().zip(&expected_grads))
            {
                close(got, want, 1e-4, &format!("case {i} {name}"));
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dims = [1, 2, 1, 5, 4];
        let (qkv, w) = inputs(dims, 5);
        let layout = SlotLayout {
            padding: vec![2],
            start: 0,
        };
        let loss = |qkv: &[Tensor<Flex, 4>; 3]| -> f64 {
            let [q, k, v] = qkv.clone().map(Tensor::<Ad, 4>::from_inner);
            let out = attention(&q, &k, &v, &layout).unwrap().inner();
            (out.cast(burn::tensor::DType::F64) * w.clone().cast(burn::tensor::DType::F64))
                .sum()
                .into_scalar()
                .elem::<f64>()
        };
        let fused = |q, k, v| attention(&q, &k, &v, &layout).unwrap();
        let (_, grads) = loss_and_grads(fused, &qkv, &w);
        let h = 1e-2;
        for (which, grad) in grads.iter().enumerate() {
            let base = qkv[which].clone().into_data().into_vec::<f32>().unwrap();
            for (i, &analytic) in grad.iter().enumerate() {
                let shifted = |delta: f32| {
                    let mut values = base.clone();
                    values[i] += delta;
                    let mut moved = qkv.clone();
                    moved[which] = Tensor::from_data(
                        TensorData::new(values, qkv[which].shape()),
                        &Default::default(),
                    );
                    loss(&moved)
                };
                let numeric = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
                assert!(
                    (numeric - analytic as f64).abs() < 2e-3 * (1.0 + numeric.abs()),
                    "input {which}, element {i}: finite difference {numeric}, analytic {analytic}"
                );
            }
        }
    }

    #[test]
    fn other_backends_and_cached_layouts_take_burns_ops() {
        let (qkv, _) = inputs([1, 2, 1, 4, 4], 1);
        let [q, k, v] = qkv;
        let layout = SlotLayout {
            padding: vec![0],
            start: 0,
        };
        assert!(
            attention(&q, &k, &v, &layout).is_none(),
            "Flex without autodiff"
        );
        let [q, k, v] = [q, k, v].map(Tensor::<Ad, 4>::from_inner);
        let cached = SlotLayout {
            padding: vec![0],
            start: 2,
        };
        assert!(attention(&q, &k, &v, &cached).is_none());
    }
}
