//! Grouped-query attention over a left-padded batch, with the masking rule of
//! [`SlotLayout`]: the query in slot `q` of row `b` sees key slots `padding[b] ≤ k ≤ q`
//! (a padding slot sees only itself).
//!
//! ```text
//! out[b, t, h] = Σ_k softmax_k(q[b, h, t]·K[b, h/G, k] / √hd) · V[b, h/G, k]
//! ```
//!
//! On the CPU backend (`flex`, f32, no autodiff) the kernels read queries and the cached keys
//! and values where they are (the cache's buffers are wider than the filled slots) and write
//! the output in the `[B, T, H·hd]` layout of the output projection: blocks of query rows
//! through GEMM products ([`crate::attention_blocks`]) for prefill and scoring, dot products
//! per query for the few rows of a decode step. Elsewhere burn's `attention` runs with an
//! explicit mask.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, backend::Backend};

use crate::kv_cache::SlotLayout;

/// Attention of queries `q` `[B, H, T, hd]` over keys and values `[B, KV, S, hd]`
/// (`S = layout.start + T`, `H = G·KV`), returned `[B, T, H·hd]`. The generic path builds the
/// explicit mask of [`SlotLayout::mask`]; the CPU kernel needs none.
pub(crate) fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &SlotLayout,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::attention(&q, &k, &v, layout) {
        return out;
    }
    #[cfg(feature = "flex")]
    if let Some(out) = crate::attention_grad::attention(&q, &k, &v, layout) {
        return out;
    }
    generic_attention(q, k, v, layout)
}

/// burn's `attention` with the explicit mask of [`SlotLayout::mask`], on any backend.
pub(crate) fn generic_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &SlotLayout,
) -> Tensor<B, 3> {
    let [batch, heads, len, head_dim] = q.dims();
    let kv_heads = k.dims()[1];
    let group = heads / kv_heads;
    let mask = layout.mask(len, group, &q.device());
    // The `G` query heads of each key/value head stacked along the query axis,
    // `[B, KV, G·T, hd]`, so keys and values are not repeated.
    let q = q.reshape([batch, kv_heads, group * len, head_dim]);
    attention(q, k, v, mask, None, AttentionModuleOptions::default())
        .reshape([batch, heads, len, head_dim])
        .swap_dims(1, 2)
        .reshape([batch, len, heads * head_dim])
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::flex::FlexTensor;
    use burn::prelude::*;
    use rayon::prelude::*;

    use crate::attention_blocks::{Dims, Heads};
    use crate::flex_tensor::{from_f32, to_flex};
    use crate::kv_cache::SlotLayout;

    /// An f32 tensor's storage from its first element and its strides, when the last
    /// dimension is contiguous and no stride is negative.
    struct Strided<'a> {
        data: &'a [f32],
        strides: [usize; 3],
    }

    impl<'a> Strided<'a> {
        fn new(flex: &'a FlexTensor) -> Option<Self> {
            let layout = flex.layout();
            let strides: Vec<usize> = layout
                .strides()
                .iter()
                .map(|&s| usize::try_from(s).ok())
                .collect::<Option<_>>()?;
            let (&[s0, s1, s2, 1], offset) = (strides.as_slice(), layout.start_offset()) else {
                return None;
            };
            let shape = layout.shape();
            let last = (0..4).map(|d| (shape[d] - 1) * strides[d]).sum::<usize>();
            let data = flex.storage::<f32>().get(offset..=offset + last)?;
            Some(Self {
                data,
                strides: [s0, s1, s2],
            })
        }

        /// The same buffer for [`crate::attention_blocks`].
        fn heads(&self) -> Heads<'a> {
            Heads {
                data: self.data,
                strides: self.strides,
            }
        }

        /// The `hd` values at `[a, b, c, ..]`.
        fn row(&self, a: usize, b: usize, c: usize, hd: usize) -> &'a [f32] {
            let [s0, s1, s2] = self.strides;
            &self.data[a * s0 + b * s1 + c * s2..][..hd]
        }
    }

    /// `Σ_i x_i·y_i` in 8 independent lanes (so that it vectorizes).
    fn dot(x: &[f32], y: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
        let tail: f32 = xc
            .remainder()
            .iter()
            .zip(yc.remainder())
            .map(|(a, b)| a * b)
            .sum();
        for (a, b) in xc.zip(yc) {
            for i in 0..8 {
                lanes[i] += a[i] * b[i];
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    /// Query rows from which a call goes through [`crate::attention_blocks::forward`]; below,
    /// a decode step's few rows take the dot products (measured on SmolLM2, see
    /// `docs/performance.md`).
    const BLOCKED_FROM: usize = 8;

    /// [`super::grouped_attention`] on CPU tensors; `None` when the backend or a layout
    /// does not fit.
    pub fn attention<B: Backend>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        layout: &SlotLayout,
    ) -> Option<Tensor<B, 3>> {
        let [batch, heads, len, hd] = q.dims();
        let [_, kv_heads, slots, _] = k.dims();
        let empty = [batch, heads, len, hd].contains(&0);
        let grouped = kv_heads > 0 && heads.is_multiple_of(kv_heads);
        if empty || !grouped || slots != layout.start + len || layout.padding.len() != batch {
            return None;
        }
        let q_flex = to_flex(q.clone())?;
        let (k_flex, v_flex) = (to_flex(k.clone())?, to_flex(v.clone())?);
        let q = q_flex.as_slice::<f32>()?;
        let (k, v) = (Strided::new(&k_flex)?, Strided::new(&v_flex)?);
        if len >= BLOCKED_FROM {
            let dims = Dims {
                batch,
                heads,
                kv_heads,
                len,
                head_dim: hd,
            };
            let queries = Heads {
                data: q,
                strides: [heads * len * hd, len * hd, hd],
            };
            let (keys, values) = (k.heads(), v.heads());
            let (out, _) = crate::attention_blocks::forward(dims, layout, queries, keys, values);
            return from_f32(out, [batch, len, heads * hd]);
        }
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; batch * len * heads * hd];
        // One task per query token: all heads of `out[b, t, :]`.
        out.par_chunks_mut(heads * hd)
            .enumerate()
            .for_each(|(bt, out)| {
                let (b, t) = (bt / len, bt % len);
                let slot = layout.start + t;
                let pad = layout.padding[b];
                let keys = if slot < pad {
                    slot..slot + 1
                } else {
                    pad..slot + 1
                };
                let mut weights = vec![0f32; keys.len()];
                for (h, out) in out.chunks_exact_mut(hd).enumerate() {
                    let kv = h / group;
                    let query = &q[((b * heads + h) * len + t) * hd..][..hd];
                    for (w, key) in weights.iter_mut().zip(keys.clone()) {
                        *w = dot(query, k.row(b, kv, key, hd)) * scale;
                    }
                    let max = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut total = 0.0;
                    for w in weights.iter_mut() {
                        *w = opd_divergences::fast_exp::exp(*w - max);
                        total += *w;
                    }
                    out.fill(0.0);
                    for (w, key) in weights.iter().zip(keys.clone()) {
                        let p = w / total;
                        for (o, x) in out.iter_mut().zip(v.row(b, kv, key, hd)) {
                            *o += p * x;
                        }
                    }
                }
            });
        from_f32(out, [batch, len, heads * hd])
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor, s};

    use super::grouped_attention;
    use crate::kv_cache::SlotLayout;

    /// The CPU kernels against burn's attention with the explicit mask: left padding, a block of
    /// new tokens after cached slots, grouped heads, and keys read from a wider buffer; a
    /// decode-sized block (dot products) and prefill-sized ones (blocks of GEMM products, one of
    /// them over several blocks of rows and without cached slots).
    #[test]
    fn cpu_kernels_match_burn_attention() {
        for (len, start) in [(4, 3), (20, 3), (150, 0)] {
            compare_with_burn(len, start);
        }
    }

    fn compare_with_burn(len: usize, start: usize) {
        let device = Default::default();
        let (batch, heads, kv_heads, hd) = (3, 6, 2, 16);
        let layout = SlotLayout {
            padding: vec![0, 2, 5],
            start,
        };
        let normal = Distribution::Normal(0.0, 1.0);
        let q = Tensor::<Flex, 4>::random([batch, heads, len, hd], normal, &device);
        let wide = |seed: usize| {
            Tensor::<Flex, 4>::random([batch, kv_heads, start + len + 5, hd], normal, &device)
                .add_scalar(seed as f32)
                .slice(s![.., .., 0..start + len, ..])
        };
        let (k, v) = (wide(0), wide(1));
        let fast = grouped_attention(q.clone(), k.clone(), v.clone(), &layout);
        // The generic path, with contiguous copies that the kernel would also take.
        let [b, h, t, d] = q.dims();
        let expected = burn::tensor::module::attention(
            q.reshape([b, kv_heads, h / kv_heads * t, d]),
            k,
            v,
            layout.mask::<Flex>(len, heads / kv_heads, &device),
            None,
            Default::default(),
        )
        .reshape([b, h, t, d])
        .swap_dims(1, 2)
        .reshape([b, t, h * d]);
        let (fast, expected) = (
            fast.into_data().to_vec::<f32>().unwrap(),
            expected.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(fast.len(), expected.len());
        for (f, e) in fast.iter().zip(&expected) {
            assert!((f - e).abs() < 1e-5, "T {len}, start {start}: {f} vs {e}");
        }
    }
}
