//! `y = x·W` for the few rows of a decode step, on the CPU backend.
//!
//! A decode step multiplies a handful of rows (one per sequence) by every weight matrix. A
//! general GEMM packs the weight into panels on every call, which costs as much as the product
//! itself when `x` has 1 to 64 rows. The weights here are transposed views of the checkpoint's
//! row-major `[out, in]` matrices, so each output is the dot product of two contiguous rows:
//! [`matmul_weight`] streams every weight row once, against all rows of `x`, with no packing.
//! Larger products go to OpenBLAS when the `openblas` feature is on, and otherwise, like other
//! layouts and backends, to burn's `matmul`.

use burn::prelude::*;

/// `x·W` for `x` `[m, k]` and `W` `[k, n]`: `y[i, j] = Σ_p x[i, p]·W[p, j]`.
///
/// On the `flex` backend on x86-64 with AVX2 and FMA, when `W` is the transposed view of a
/// row-major `[n, k]` matrix (how [`crate::Llama`] keeps its linear and tied output
/// weights), `k` is a multiple of 8 and `x` has 1 to 64 rows (1 to 15 with `openblas`), the
/// product runs as dot products of contiguous rows; each row of `y` is then computed the same
/// way whatever the other rows are, so batching does not change it. With the `openblas`
/// feature, other CPU f32 products go to OpenBLAS's `sgemm`; everything else goes to
/// [`Tensor::matmul`].
pub fn matmul_weight<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(all(feature = "flex", target_arch = "x86_64"))]
    if let Some(y) = flex::try_rows(&x, &weight) {
        return y;
    }
    #[cfg(feature = "openblas")]
    if let Some(y) = crate::openblas::try_sgemm(&x, &weight) {
        return y;
    }
    x.matmul(weight)
}

#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod flex {
    use burn::prelude::*;

    use crate::flex_tensor::{from_f32, to_flex};

    /// Rows of `x` the kernel takes; above, a GEMM's packing pays: the `gemm` crate's from
    /// 65 rows, OpenBLAS's from 16 (measured on SmolLM2's shapes, see `docs/performance.md`).
    #[cfg(not(feature = "openblas"))]
    const ROWS: std::ops::RangeInclusive<usize> = 1..=64;
    #[cfg(feature = "openblas")]
    const ROWS: std::ops::RangeInclusive<usize> = 1..=15;

    /// The product through [`super::kernel::rows`] when the backend, layouts and shape allow.
    pub fn try_rows<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        let ([m, k], [k_w, n]) = (x.dims(), weight.dims());
        if !ROWS.contains(&m) || k != k_w || !k.is_multiple_of(8) || n == 0 {
            return None;
        }
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return None;
        }
        let (x_flex, w_flex) = (to_flex(x.clone())?, to_flex(weight.clone())?);
        let x_rows = x_flex.as_slice::<f32>()?;
        // `W` `[k, n]` with strides `[1, k]`: row `j` of the `[n, k]` storage is column `j`.
        let layout = w_flex.layout();
        if layout.strides() != [1, k as isize] {
            return None;
        }
        let start = layout.start_offset();
        let w_rows = w_flex.storage::<f32>().get(start..start + n * k)?;
        from_f32(super::kernel::rows(x_rows, m, k, w_rows, n), [m, n])
    }
}

#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod kernel {
    //! The AVX2 kernel: tiles of 4 weight rows × 3 input rows, 8 lanes, fused multiply-add.

    use std::arch::x86_64::*;

    use rayon::prelude::*;

    /// Weight rows per tile.
    const R: usize = 4;
    /// Input rows per tile (one when there is one row).
    const M: usize = 3;
    /// Weight rows per parallel task.
    const CHUNK: usize = 32;

    /// `y[i, j] = Σ_p x[i, p]·w[j, p]` for `x` `[m, k]` and `w` `[n, k]`, both row-major,
    /// returned `[m, n]` row-major. Needs AVX2 and FMA, and `k % 8 == 0`.
    pub fn rows(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
        assert!(k.is_multiple_of(8) && x.len() == m * k && w.len() == n * k && m > 0);
        // Outputs per task stored `[j][i]` so tasks write disjoint slices; transposed after.
        let mut by_column = vec![0f32; n * m];
        by_column
            .par_chunks_mut(CHUNK * m)
            .enumerate()
            .for_each(|(c, out)| {
                // SAFETY: AVX2 and FMA were checked above; `block` reads `x` rows `< m` and
                // `w` rows `< n`, each `k` long, which the length checks above guarantee.
                unsafe {
                    match m {
                        1 => block::<1>(x, m, k, w, c * CHUNK, out),
                        _ => block::<M>(x, m, k, w, c * CHUNK, out),
                    }
                }
            });
        let mut y = vec![0f32; m * n];
        for (j, column) in by_column.chunks_exact(m).enumerate() {
            for (i, &v) in column.iter().enumerate() {
                y[i * n + j] = v;
            }
        }
        y
    }

    /// The outputs `j0 .. j0 + out.len() / m`, written to `out` as `[j][i]`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const M: usize>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        j0: usize,
        out: &mut [f32],
    ) {
        let len = out.len() / m;
        let mut j = 0;
        while j < len {
            let r = (len - j).min(R);
            // Past the last row a tile repeats it; those results are not stored.
            let w_rows: [*const f32; R] =
                std::array::from_fn(|q| unsafe { w.as_ptr().add((j0 + j + q.min(r - 1)) * k) });
            let mut i = 0;
            while i < m {
                let x_rows: [*const f32; M] =
                    std::array::from_fn(|q| unsafe { x.as_ptr().add((i + q).min(m - 1) * k) });
                let t = unsafe { tile(x_rows, w_rows, k) };
                for (q, t_row) in t.iter().enumerate().take(r) {
                    for (s, &v) in t_row.iter().enumerate().take(M.min(m - i)) {
                        out[(j + q) * m + i + s] = v;
                    }
                }
                i += M;
            }
            j += R;
        }
    }

    /// Dot products of `R` weight rows with `M` input rows, each `k` long.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const M: usize>(
        x: [*const f32; M],
        w: [*const f32; R],
        k: usize,
    ) -> [[f32; M]; R] {
        let mut acc = [[_mm256_setzero_ps(); M]; R];
        for p in (0..k).step_by(8) {
            let xv: [__m256; M] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x[i].add(p)) });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wv = unsafe { _mm256_loadu_ps(w[r].add(p)) };
                for (a, &xi) in acc_r.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(wv, xi, *a);
                }
            }
        }
        acc.map(|row| row.map(|v| horizontal_sum(v)))
    }

    /// The sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}

#[cfg(all(test, feature = "flex", target_arch = "x86_64"))]
mod tests {
    use burn::backend::Flex;
    use burn::prelude::*;
    use burn::tensor::{Distribution, TensorData};

    use super::matmul_weight;

    /// Every row count the kernel takes (and its neighbours, which go to GEMM), with output
    /// counts that leave partial tiles and chunks, against burn's matmul.
    #[test]
    fn matches_matmul_for_decode_shapes() {
        let device = Default::default();
        for (m, n, k) in [
            (1, 5, 8),
            (1, 9000, 576),
            (64, 9000, 16),
            (2, 1, 8),
            (3, 33, 16),
            (5, 70, 24),
            (8, 192, 576),
            (17, 577, 64),
            (32, 130, 40),
            (33, 9, 8),
            (64, 20, 16),
            (65, 9, 8),
            (4, 9000, 16),
            (9, 9000, 16),
            (6, 7, 12),
        ] {
            let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let w_rows = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
            let expected: Vec<f32> = x
                .clone()
                .matmul(w_rows.clone().transpose())
                .into_data()
                .to_vec()
                .unwrap();
            let got: Vec<f32> = matmul_weight(x, w_rows.transpose())
                .into_data()
                .to_vec()
                .unwrap();
            assert_eq!(got.len(), m * n);
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{m}x{n}x{k}: {g} vs {e}"
                );
            }
        }
    }

    /// A contiguous `[k, n]` weight is not the layout the kernel reads: GEMM takes it, and
    /// the product is still right.
    #[test]
    fn other_layouts_fall_back() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::from_data(TensorData::new(vec![1.0f32; 16], [2, 8]), &device);
        let w = Tensor::<Flex, 2>::from_data(
            TensorData::new((0..24).map(|v| v as f32).collect::<Vec<_>>(), [8, 3]),
            &device,
        );
        let y: Vec<f32> = matmul_weight(x, w).into_data().to_vec().unwrap();
        assert_eq!(y, vec![84.0, 92.0, 100.0, 84.0, 92.0, 100.0]);
    }
}
