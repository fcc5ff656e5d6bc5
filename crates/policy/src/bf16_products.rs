//! Products with a frozen weight kept in bfloat16 (half the bytes of f32), on the CPU: the
//! forward `y = x·Wᵀ` and the backward `dx = dy·W` of a linear layer whose weight `W` `[n, k]`
//! (row-major, the checkpoint's `[out, in]`) does not train.
//!
//! ```text
//! y[i, j]  = Σ_p bf16(x[i, p]) · W[j, p]        x  [m, k] f32  →  y  [m, n] f32
//! dx[i, p] = Σ_j bf16(dy[i, j]) · W[j, p]       dy [m, n] f32  →  dx [m, k] f32
//! ```
//!
//! The activations are rounded to bf16 (to nearest, ties to even), every product of two bf16
//! values is exact in f32, and the sums are f32: what `torch.autocast("cpu", torch.bfloat16)`
//! computes. With AVX512_BF16 (`vdpbf16ps`: 32 such products summed into 16 f32 lanes per
//! instruction) the forward runs as dot products of contiguous rows in tiles of 4 × 4, the
//! backward as broadcasts of `dy` pairs against pairs of weight rows interleaved on the fly,
//! so neither needs a second copy of the weight. Other CPUs take a portable path with the same
//! arithmetic (summed in another order).

use half::bf16;
use rayon::prelude::*;

/// Whether this CPU has the bf16 dot-product instructions the fast paths use.
pub fn has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Values per parallel task of [`to_bf16`].
const CONVERT_CHUNK: usize = 1 << 14;

/// `values` rounded to bf16, to nearest with ties to even (with AVX512_BF16, subnormal inputs
/// become zero, as the instruction does).
pub fn to_bf16(values: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; values.len()];
    out.par_chunks_mut(CONVERT_CHUNK)
        .zip(values.par_chunks(CONVERT_CHUNK))
        .for_each(|(out, values)| {
            #[cfg(target_arch = "x86_64")]
            if has_bf16_dot() {
                // SAFETY: the instructions were checked; both slices have one length.
                return unsafe { avx512::convert(values, out) };
            }
            for (o, &v) in out.iter_mut().zip(values) {
                *o = bf16::from_f32(v);
            }
        });
    out
}

/// `y = bf16(x)·Wᵀ`: `x` `[m, k]`, `w` `[n, k]` row-major, `y` `[m, n]` row-major.
pub fn forward(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    assert!(x.len() == m * k && w.len() == n * k, "forward: shapes");
    let xb = to_bf16(x);
    #[cfg(target_arch = "x86_64")]
    if has_bf16_dot() {
        return avx512::forward(&xb, m, k, w, n);
    }
    let mut y = vec![0f32; m * n];
    y.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let xi = &xb[i * k..][..k];
        for (j, out) in row.iter_mut().enumerate() {
            *out = dot(xi, &w[j * k..][..k]);
        }
    });
    y
}

/// `dx = bf16(dy)·W`: `dy` `[m, n]`, `w` `[n, k]` row-major, `dx` `[m, k]` row-major.
pub fn backward(dy: &[f32], m: usize, n: usize, w: &[bf16], k: usize) -> Vec<f32> {
    assert!(dy.len() == m * n && w.len() == n * k, "backward: shapes");
    #[cfg(target_arch = "x86_64")]
    if has_bf16_dot() {
        return avx512::backward(dy, m, n, w, k);
    }
    let gb = to_bf16(dy);
    let mut dx = vec![0f32; m * k];
    dx.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        for (j, &g) in gb[i * n..][..n].iter().enumerate() {
            let g = g.to_f32();
            for (out, wv) in row.iter_mut().zip(&w[j * k..][..k]) {
                *out += g * wv.to_f32();
            }
        }
    });
    dx
}

/// `Σ_p a[p]·b[p]` of two bf16 rows, in f32.
fn dot(a: &[bf16], b: &[bf16]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a.to_f32() * b.to_f32()).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The AVX512_BF16 kernels. Both split the output among rayon tasks that own disjoint
    //! elements of it and write them through a shared pointer.

    use std::arch::x86_64::*;

    use half::bf16;
    use rayon::prelude::*;

    /// A pointer to the output that tasks share; each writes only the elements it owns.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: the tasks given an `Out` write disjoint elements and the buffer outlives them.
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}
    impl Out {
        fn at(self, offset: usize) -> *mut f32 {
            // SAFETY: callers pass offsets inside the buffer.
            unsafe { self.0.add(offset) }
        }
    }

    /// `out[i] = bf16(values[i])`, 16 at a time (`vcvtneps2bf16`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn convert(values: &[f32], out: &mut [bf16]) {
        for (out, values) in out.chunks_mut(16).zip(values.chunks(16)) {
            let mask = mask16(values.len());
            // SAFETY: the masks keep both accesses inside the chunks.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, values.as_ptr());
                let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_mask_storeu_epi16(out.as_mut_ptr() as *mut i16, mask, b);
            }
        }
    }

    /// Weight rows per forward task.
    const ROWS_PER_TASK: usize = 32;
    /// `x` rows per forward task.
    const X_ROWS_PER_TASK: usize = 256;
    /// Output columns per backward task (two vectors of 16).
    const COLUMNS_PER_TASK: usize = 32;
    /// `dy` rows per backward tile.
    const DY_ROWS: usize = 8;

    /// Lanes `len` long from the start of a 32-lane bf16 vector.
    fn mask32(len: usize) -> __mmask32 {
        if len >= 32 {
            u32::MAX
        } else {
            (1u32 << len) - 1
        }
    }

    fn mask16(len: usize) -> __mmask16 {
        if len >= 16 {
            u16::MAX
        } else {
            (1u16 << len) - 1
        }
    }

    pub fn forward(xb: &[bf16], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        let out = Out(y.as_mut_ptr());
        // Tasks are blocks of `x` rows × chunks of weight rows, so a task's rows of `x` (at most
        // `X_ROWS_PER_TASK · k` bf16) stay in the core's cache while its weight rows pass.
        let chunks = n.div_ceil(ROWS_PER_TASK);
        (0..m.div_ceil(X_ROWS_PER_TASK) * chunks)
            .into_par_iter()
            .for_each(|task| {
                let (block, chunk) = (task / chunks, task % chunks);
                let x_rows = block * X_ROWS_PER_TASK..((block + 1) * X_ROWS_PER_TASK).min(m);
                let w_rows = chunk * ROWS_PER_TASK..((chunk + 1) * ROWS_PER_TASK).min(n);
                // SAFETY: `has_bf16_dot` was checked by the caller; the task writes `y[i, j]`
                // for its own rows `i` and `j` only, inside the `m × n` buffer.
                unsafe { forward_rows(xb, x_rows, k, w, n, w_rows, out) }
            });
        y
    }

    /// `y[i, j]` for `i ∈ x_rows` and `j ∈ w_rows`: tiles of 4 `x` rows (1 for the last few
    /// rows, and for a decode step's) × 4 weight rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn forward_rows(
        xb: &[bf16],
        x_rows: std::ops::Range<usize>,
        k: usize,
        w: &[bf16],
        n: usize,
        w_rows: std::ops::Range<usize>,
        out: Out,
    ) {
        let mut i0 = x_rows.start;
        while i0 < x_rows.end {
            // SAFETY: the tiles read rows `x_rows` of `x` and `w_rows` of `w`, and write their
            // own outputs (the caller's contract).
            i0 += match x_rows.end - i0 >= 4 {
                true => unsafe { forward_tile::<4>(xb, i0, k, w, n, w_rows.clone(), out) },
                false => unsafe { forward_tile::<1>(xb, i0, k, w, n, w_rows.clone(), out) },
            };
        }
    }

    /// `y[i0 .. i0 + M, j]` for `j ∈ rows`, 4 weight rows at a time (a tile past the last
    /// row repeats it and drops those results); returns `M`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn forward_tile<const M: usize>(
        xb: &[bf16],
        i0: usize,
        k: usize,
        w: &[bf16],
        n: usize,
        rows: std::ops::Range<usize>,
        out: Out,
    ) -> usize {
        let (xp, wp) = (xb.as_ptr() as *const i16, w.as_ptr() as *const i16);
        for j0 in rows.clone().step_by(4) {
            let wj: [usize; 4] = std::array::from_fn(|c| (j0 + c).min(rows.end - 1) * k);
            let mut acc = [[_mm512_setzero_ps(); 4]; M];
            for p in (0..k).step_by(32) {
                let mask = mask32(k - p);
                // SAFETY: lanes past `k - p` are masked off; the rest lie in rows `i0 .. i0 + M`
                // of `x` and `rows` of `w`.
                let (xv, wv) = unsafe {
                    let load = |at: usize| -> __m512bh {
                        std::mem::transmute(_mm512_maskz_loadu_epi16(mask, xp.add(at)))
                    };
                    let xv: [__m512bh; M] = std::array::from_fn(|r| load((i0 + r) * k + p));
                    let wv: [__m512bh; 4] = std::array::from_fn(|c| {
                        std::mem::transmute(_mm512_maskz_loadu_epi16(mask, wp.add(wj[c] + p)))
                    });
                    (xv, wv)
                };
                for (acc, &x) in acc.iter_mut().zip(&xv) {
                    for (a, &w) in acc.iter_mut().zip(&wv) {
                        *a = _mm512_dpbf16_ps(*a, x, w);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (c, &s) in sum4(acc).iter().enumerate().take(rows.end - j0) {
                    // SAFETY: `i0 + r < m` and `j0 + c < n`.
                    unsafe { *out.at((i0 + r) * n + j0 + c) = s };
                }
            }
        }
        M
    }

    /// The lane sums of four vectors, `[Σ a, Σ b, Σ c, Σ d]`.
    #[target_feature(enable = "avx512f")]
    fn sum4([a, b, c, d]: &[__m512; 4]) -> [f32; 4] {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], the same for c and d, then
        // [A, B, C, D] partial sums per lane, then the four lanes added.
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(*a, *b), _mm512_unpackhi_ps(*a, *b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(*c, *d), _mm512_unpackhi_ps(*c, *d));
        let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
        let lanes = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
        );
        let half = _mm256_add_ps(
            _mm512_castps512_ps256(lanes),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(lanes))),
        );
        let quarter = _mm_add_ps(
            _mm256_castps256_ps128(half),
            _mm256_extractf128_ps::<1>(half),
        );
        let mut sums = [0f32; 4];
        // SAFETY: `sums` holds 4 f32.
        unsafe { _mm_storeu_ps(sums.as_mut_ptr(), quarter) };
        sums
    }

    pub fn backward(dy: &[f32], m: usize, n: usize, w: &[bf16], k: usize) -> Vec<f32> {
        // `dy` in bf16 with rows padded to an even length, so `(dy[i, j], dy[i, j + 1])` is one
        // 32-bit word for every even `j`.
        let width = n.next_multiple_of(2);
        let gb = match width == n {
            true => super::to_bf16(dy),
            false => {
                let mut gb = vec![bf16::ZERO; m * width];
                for (row, src) in gb.chunks_exact_mut(width).zip(dy.chunks_exact(n)) {
                    row[..n].copy_from_slice(&super::to_bf16(src));
                }
                gb
            }
        };
        let mut dx = vec![0f32; m * k];
        let out = Out(dx.as_mut_ptr());
        (0..k.div_ceil(COLUMNS_PER_TASK))
            .into_par_iter()
            .for_each(|task| {
                let p0 = task * COLUMNS_PER_TASK;
                // SAFETY: `has_bf16_dot` was checked by the caller; the task writes `dx[i, p]` for
                // its own 32 columns only, inside the `m × k` buffer.
                unsafe { backward_columns(&gb, m, width, n, w, k, p0, out) }
            });
        dx
    }

    /// `dx[i, p0 .. p0 + 32]` for every `i`, in tiles of 8 rows. For each pair of weight rows
    /// `(j, j + 1)`, `unpacklo/hi_epi16` interleave their 32 columns into two vectors of 16
    /// `(W[j, p], W[j + 1, p])` pairs (columns `8l + 0..4` and `8l + 4..8` of each 128-bit lane
    /// `l`), which `vdpbf16ps` multiplies by the broadcast pair `(dy[i, j], dy[i, j + 1])`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn backward_columns(
        gb: &[bf16],
        m: usize,
        width: usize,
        n: usize,
        w: &[bf16],
        k: usize,
        p0: usize,
        out: Out,
    ) {
        let (gp, wp) = (gb.as_ptr() as *const i32, w.as_ptr() as *const i16);
        let columns = (k - p0).min(32);
        let mask = mask32(columns);
        // Output order from the interleaved lanes: `lo` lane `l` holds columns `8l..8l+4`,
        // `hi` lane `l` columns `8l+4..8l+8`.
        let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let second =
            _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        for i0 in (0..m).step_by(DY_ROWS) {
            let gi: [usize; DY_ROWS] = std::array::from_fn(|r| (i0 + r).min(m - 1) * width / 2);
            let mut lo = [_mm512_setzero_ps(); DY_ROWS];
            let mut hi = [_mm512_setzero_ps(); DY_ROWS];
            for j in (0..n).step_by(2) {
                // SAFETY: columns past `k` are masked off; row `j + 1` is read only when `< n`.
                let (a, b) = unsafe {
                    let a = _mm512_maskz_loadu_epi16(mask, wp.add(j * k + p0));
                    let b = match j + 1 < n {
                        true => _mm512_maskz_loadu_epi16(mask, wp.add((j + 1) * k + p0)),
                        false => _mm512_setzero_si512(),
                    };
                    (a, b)
                };
                let wlo: __m512bh = unsafe { std::mem::transmute(_mm512_unpacklo_epi16(a, b)) };
                let whi: __m512bh = unsafe { std::mem::transmute(_mm512_unpackhi_epi16(a, b)) };
                for r in 0..DY_ROWS {
                    // SAFETY: `gi[r] + j / 2` is a pair inside row `< m` of the padded `dy`.
                    let pair = unsafe { *gp.add(gi[r] + j / 2) };
                    let g: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair)) };
                    lo[r] = _mm512_dpbf16_ps(lo[r], g, wlo);
                    hi[r] = _mm512_dpbf16_ps(hi[r], g, whi);
                }
            }
            for r in 0..(m - i0).min(DY_ROWS) {
                let at = out.at((i0 + r) * k + p0);
                let v0 = _mm512_permutex2var_ps(lo[r], first, hi[r]);
                let v1 = _mm512_permutex2var_ps(lo[r], second, hi[r]);
                // SAFETY: the masks keep the stores inside the row's `columns` outputs.
                unsafe {
                    _mm512_mask_storeu_ps(at, mask16(columns), v0);
                    if columns > 16 {
                        _mm512_mask_storeu_ps(at.add(16), mask16(columns - 16), v1);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in `±2` from a fixed sequence.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// The two products in f64 from the bf16-rounded inputs.
    fn reference(
        a: &[f32],
        rows: usize,
        inner: usize,
        w: &[bf16],
        cols: usize,
        forward: bool,
    ) -> Vec<f64> {
        let a: Vec<f64> = a.iter().map(|&v| bf16::from_f32(v).to_f64()).collect();
        let mut out = vec![0f64; rows * cols];
        for i in 0..rows {
            for c in 0..cols {
                out[i * cols + c] = (0..inner)
                    .map(|p| {
                        let wv = match forward {
                            true => w[c * inner + p], // y: w [cols, inner]
                            false => w[p * cols + c], // dx: w [inner, cols]
                        };
                        a[i * inner + p] * wv.to_f64()
                    })
                    .sum();
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()) * 40.0,
                "{what} [{i}]: {g} vs {w}"
            );
        }
    }

    /// Shapes with tails of every kind: `k` not a multiple of 32, odd `n`, rows not a multiple
    /// of the tiles, a single row.
    const SHAPES: [(usize, usize, usize); 6] = [
        (1, 32, 16),
        (5, 40, 7),
        (9, 64, 33),
        (4, 576, 192),
        (17, 100, 65),
        (3, 8, 1),
    ];

    #[test]
    fn forward_matches_a_float64_reference() {
        for (m, k, n) in SHAPES {
            let x = values(m * k, 1);
            let w = to_bf16(&values(n * k, 2));
            let want = reference(&x, m, k, &w, n, true);
            assert_close(
                &forward(&x, m, k, &w, n),
                &want,
                &format!("forward {m}×{k}×{n}"),
            );
        }
    }

    #[test]
    fn backward_matches_a_float64_reference() {
        for (m, k, n) in SHAPES {
            let dy = values(m * n, 3);
            let w = to_bf16(&values(n * k, 4));
            let want = reference(&dy, m, n, &w, k, false);
            assert_close(
                &backward(&dy, m, n, &w, k),
                &want,
                &format!("backward {m}×{n}×{k}"),
            );
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ lies halfway between bf16 neighbours 1 and 1 + 2⁻⁷: ties go to the even one, 1.
        let halfway = 1.0 + 2f32.powi(-8);
        assert_eq!(to_bf16(&[halfway])[0].to_f32(), 1.0);
        assert_eq!(
            to_bf16(&[1.0 + 3.0 * 2f32.powi(-8)])[0].to_f32(),
            1.0 + 2f32.powi(-6)
        );
    }
}
