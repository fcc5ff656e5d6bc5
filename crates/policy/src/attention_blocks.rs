//! The forward of grouped-query attention on the CPU in blocks of query rows, each block's two
//! products through the `gemm` crate: what prefill, teacher scoring and the training forward
//! ([`crate::attention_grad`]) run. Decode steps (a few query rows) take the dot-product kernel
//! of [`crate::attention`].
//!
//! ```text
//! S = Q Kᵀ / √hd over the keys up to the block's last slot     P = softmax(S) over the visible keys
//! O = P V                                                      L = log Σ_visible exp(S)
//! ```
//!
//! A unit of work is one row `b` and one block of query rows, all heads: it owns the rows
//! `out[b, block, :]` (the `[B, T, H·hd]` layout of the output projection), so every task
//! writes where the output lies and no copy follows. Memory beyond the output: one
//! `block × S` score matrix per task.

use std::ops::Range;

use opd_divergences::fast_exp::exp;
use rayon::prelude::*;

use crate::kv_cache::SlotLayout;

/// Query rows per block at most.
const MAX_BLOCK: usize = 64;
/// Query rows per block at least (smaller products waste the GEMM's packing).
const MIN_BLOCK: usize = 8;

/// The keys query slot `t` of a row with `pad` left-padding slots sees.
pub(crate) fn visible(t: usize, pad: usize) -> Range<usize> {
    if t < pad { t..t + 1 } else { pad..t + 1 }
}

/// A row-major matrix view: pointer, row stride, column stride (in elements).
#[derive(Clone, Copy)]
pub(crate) struct View {
    ptr: *const f32,
    row: isize,
    col: isize,
}

impl View {
    /// The row-major matrix at `at` with row stride `row`.
    pub(crate) fn rows(data: &[f32], at: usize, row: usize) -> Self {
        Self {
            ptr: data[at..].as_ptr(),
            row: row as isize,
            col: 1,
        }
    }

    /// The transpose of the row-major matrix at `at` with row stride `row`.
    pub(crate) fn transposed(data: &[f32], at: usize, row: usize) -> Self {
        Self {
            ptr: data[at..].as_ptr(),
            row: 1,
            col: row as isize,
        }
    }
}

/// `dst[m × n] (row stride dst_row) = [dst +] alpha · lhs[m × k] · rhs[k × n]`, on this thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_row: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    alpha: f32,
) {
    assert!(m == 0 || dst.len() >= (m - 1) * dst_row + n);
    // SAFETY: `dst` holds the `m × n` block at row stride `dst_row` (asserted); `lhs` and
    // `rhs` point into slices that hold their `m × k` and `k × n` blocks at their strides (the
    // callers build them from the tensors' full buffers with in-range offsets).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row as isize,
            accumulate,
            lhs.ptr,
            lhs.col,
            lhs.row,
            rhs.ptr,
            rhs.col,
            rhs.row,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `P = softmax(S)` in place over the visible keys of the query slots `slots` (row stride
/// `stride`; the block's row `i` is slot `slots.start + i`; `keys = slots.end` columns), zero
/// elsewhere; returns each row's `L`.
fn softmax_rows(scores: &mut [f32], stride: usize, slots: Range<usize>, pad: usize) -> Vec<f32> {
    let keys = slots.end;
    slots
        .enumerate()
        .map(|(i, t)| {
            let row = &mut scores[i * stride..i * stride + keys];
            let shown = visible(t, pad);
            let lse = softmax(&mut row[shown.clone()]);
            row[..shown.start].fill(0.0);
            row[shown.end..].fill(0.0);
            lse
        })
        .collect()
}

/// Independent accumulators of the reductions below, so that they vectorize.
const LANES: usize = 16;

/// `x ← softmax(x)` in place; returns `log Σ exp(x)` of the input.
fn softmax(x: &mut [f32]) -> f32 {
    let (chunks, rest) = x.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in chunks {
        for l in 0..LANES {
            lanes[l] = lanes[l].max(chunk[l]);
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let (chunks, rest) = x.as_chunks::<LANES>();
    let mut lanes = [0.0f32; LANES];
    for chunk in chunks {
        for l in 0..LANES {
            lanes[l] += chunk[l];
        }
    }
    let sum = lanes.iter().chain(rest).sum::<f32>();
    let inverse = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inverse;
    }
    max + sum.ln()
}

/// A `[B, N, S, hd]` f32 buffer whose rows of `hd` values are contiguous: element
/// `(b, n, s, d)` lies at `b·s0 + n·s1 + s·s2 + d` of `data` (a key/value cache's buffers are
/// wider than their filled slots, so `s1` may exceed `S·hd`).
#[derive(Clone, Copy)]
pub(crate) struct Heads<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 3],
}

impl Heads<'_> {
    fn at(&self, b: usize, n: usize, s: usize) -> usize {
        let [s0, s1, s2] = self.strides;
        b * s0 + n * s1 + s * s2
    }
}

/// The shapes of one call: `B` rows, `H` query heads over `KV` key/value heads, `T` new
/// query slots, head width `hd`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub len: usize,
    pub head_dim: usize,
}

impl Dims {
    pub(crate) fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    pub(crate) fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Query rows per block: small enough that `B × blocks` gives every thread about four tasks,
/// within `[MIN_BLOCK, MAX_BLOCK]`.
fn block_rows(batch: usize, len: usize) -> usize {
    let per_row = (4 * rayon::current_num_threads()).div_ceil(batch.max(1));
    len.div_ceil(per_row.max(1)).clamp(MIN_BLOCK, MAX_BLOCK)
}

/// Attention of the queries `q` (`[B, H, T, hd]`, slots `layout.start..layout.start + T`)
/// over the keys and values `k`, `v` (`[B, KV, S, hd]`, `S = layout.start + T`), under the
/// masking rule of [`SlotLayout`]: the output `[B, T, H·hd]` and the log-sum-exp `L`
/// `[B, H, T]` of every query.
pub(crate) fn forward(
    dims: Dims,
    layout: &SlotLayout,
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
) -> (Vec<f32>, Vec<f32>) {
    let Dims {
        batch,
        heads,
        len,
        head_dim: hd,
        ..
    } = dims;
    let (group, scale, start) = (dims.group(), dims.scale(), layout.start);
    let row = heads * hd;
    let block = block_rows(batch, len);
    let mut out = vec![0.0f32; batch * len * row];
    let parts: Vec<(usize, Range<usize>, Vec<f32>)> = out
        .par_chunks_mut(len * row)
        .enumerate()
        .flat_map(|(b, out_b)| {
            out_b
                .par_chunks_mut(block * row)
                .enumerate()
                .map(move |(i, out_block)| (b, i * block, out_block))
        })
        .map(|(b, r0, out_block)| {
            let rows = r0..(r0 + block).min(len);
            let (m, slots) = (rows.len(), start + rows.start..start + rows.end);
            let keys = slots.end;
            let mut scores = vec![0.0f32; m * keys];
            let mut lse = Vec::with_capacity(heads * m);
            for h in 0..heads {
                let kv = h / group;
                let q_block = View::rows(q.data, q.at(b, h, rows.start), q.strides[2]);
                let k_t = View::transposed(k.data, k.at(b, kv, 0), k.strides[2]);
                matmul([m, keys, hd], &mut scores, keys, false, q_block, k_t, scale);
                lse.extend(softmax_rows(
                    &mut scores,
                    keys,
                    slots.clone(),
                    layout.padding[b],
                ));
                let p = View::rows(&scores, 0, keys);
                let v_rows = View::rows(v.data, v.at(b, kv, 0), v.strides[2]);
                matmul(
                    [m, hd, keys],
                    &mut out_block[h * hd..],
                    row,
                    false,
                    p,
                    v_rows,
                    1.0,
                );
            }
            (b, rows, lse)
        })
        .collect();
    let mut lse = vec![0.0f32; batch * heads * len];
    for (b, rows, part) in parts {
        let m = rows.len();
        for h in 0..heads {
            let at = (b * heads + h) * len + rows.start;
            lse[at..at + m].copy_from_slice(&part[h * m..(h + 1) * m]);
        }
    }
    (out, lse)
}
