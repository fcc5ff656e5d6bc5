//! `y = x·W` for the few rows of a decode step, on the CPU backend.
//!
//! A decode step multiplies a handful of rows (one per sequence) by every weight matrix. A
//! general GEMM packs the weight into panels on every call, which costs as much as the product
//! itself when `x` has 1 to 64 rows. The weights here are transposed views of the checkpoint's
//! row-major `[out, in]` matrices, so each output is the dot product of two contiguous rows:
//! [`matmul_weight`] streams every weight row once, against all rows of `x`, with no packing.
//! Weights rewritten by an optimizer step or an EMA update are contiguous `[in, out]` instead;
//! a second kernel broadcasts each of their rows across a block of outputs.
//! Larger products go to OpenBLAS when the `openblas` feature is on, and otherwise, like other
//! layouts and backends, to burn's `matmul`.

use burn::prelude::*;

/// `x·W` for `x` `[m, k]` and `W` `[k, n]`: `y[i, j] = Σ_p x[i, p]·W[p, j]`.
///
/// On the `flex` backend on x86-64 with AVX2 and FMA, when `W` is the transposed view of a
/// row-major `[n, k]` matrix (how [`crate::Llama`] keeps its linear and tied output
/// weights), `k` is a multiple of 8 and `x` has 1 to 64 rows (1 to 15 with `openblas`), the
/// product runs as dot products of contiguous rows; when `W` is a row-major `[k, n]` matrix
/// with `n` a multiple of 16 (weights written by an optimizer step or an EMA update), as
/// broadcasts of each weight row. Either way each row of `y` is computed the same whatever the
/// other rows are, so batching does not change it. With the `openblas`
/// feature, other CPU f32 products go to OpenBLAS's `sgemm`; everything else goes to
/// [`Tensor::matmul`]. A frozen bf16 weight ([`crate::frozen`]) takes the bf16 kernels on the
/// CPU backend, and is widened to `x`'s dtype for any other backend or layout.
pub fn matmul_weight<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(y) = crate::frozen_product::try_product(&x, &weight) {
        return y;
    }
    let weight = match weight.dtype() == x.dtype() {
        true => weight,
        false => weight.cast(x.dtype()),
    };
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

    /// The product through [`super::kernel::rows`] or [`super::kernel::columns`] when the
    /// backend, layouts and shape allow.
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
        let layout = w_flex.layout();
        let start = layout.start_offset();
        let w_values = w_flex.storage::<f32>().get(start..start + n * k)?;
        let y = match layout.strides() {
            // The transposed view of a row-major `[n, k]` matrix: row `j` is column `j`.
            [1, s] if *s == k as isize => super::kernel::rows(x_rows, m, k, w_values, n),
            // A row-major `[k, n]` matrix (weights made by an optimizer step or an EMA).
            [s, 1] if *s == n as isize && n.is_multiple_of(16) => {
                super::kernel::columns(x_rows, m, k, w_values, n)
            }
            _ => return None,
        };
        from_f32(y, [m, n])
    }
}

#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod kernel {
    //! The AVX2 kernels, 8 lanes, fused multiply-add: [`rows`] for weights stored `[n, k]`
    //! (tiles of 4 weight rows × 3 input rows), [`columns`] for weights stored `[k, n]`.

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

    /// Input rows per tile of [`columns`].
    const ROW_TILE: usize = 4;
    /// Columns per parallel task of [`columns`].
    const COLUMN_CHUNK: usize = 128;

    /// `y[i, j] = Σ_p x[i, p]·w[p, j]` for `x` `[m, k]` and `w` `[k, n]`, both row-major,
    /// returned `[m, n]` row-major: each weight row is broadcast-multiplied into 16 columns (64
    /// for a single row) at a time, summed over `p` in order (so a row's result does not depend
    /// on the others).
    /// Needs AVX2 and FMA, and `n % 16 == 0`.
    pub fn columns(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
        assert!(n.is_multiple_of(16) && x.len() == m * k && w.len() == k * n && m > 0);
        // Task `c` computes columns `c·CHUNK ..` of every row, stored `[i][j]` in its slice.
        let mut blocks = vec![0f32; m * n];
        blocks
            .par_chunks_mut(m * COLUMN_CHUNK)
            .enumerate()
            .for_each(|(c, out)| {
                let j0 = c * COLUMN_CHUNK;
                // SAFETY: AVX2 and FMA were checked above; the block reads `x` rows `< m` and
                // weight rows `< k` at columns `j0 .. j0 + out.len() / m ≤ n`.
                unsafe {
                    match m {
                        // One row: 64 columns per pass, so that each weight row is read in
                        // runs of 4 cache lines (the pass is bound by memory).
                        1 if n.is_multiple_of(64) => column_block::<1, 8>(x, m, k, w, n, j0, out),
                        1 => column_block::<1, 2>(x, m, k, w, n, j0, out),
                        _ => column_block::<ROW_TILE, 2>(x, m, k, w, n, j0, out),
                    }
                }
            });
        let mut y = vec![0f32; m * n];
        for (c, block) in blocks.chunks(m * COLUMN_CHUNK).enumerate() {
            let width = block.len() / m;
            for (i, row) in block.chunks_exact(width).enumerate() {
                y[i * n + c * COLUMN_CHUNK..][..width].copy_from_slice(row);
            }
        }
        y
    }

    /// Columns `j0 .. j0 + out.len() / m` of every row, written to `out` as `[i][j]`, in
    /// tiles of `T` rows × `V` vectors of 8 columns (`out.len() / m` a multiple of `8·V`).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn column_block<const T: usize, const V: usize>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        j0: usize,
        out: &mut [f32],
    ) {
        let width = out.len() / m;
        for jb in (0..width).step_by(8 * V) {
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(T);
                // Past the last row a tile repeats it; those results are not stored.
                let x_rows: [&[f32]; T] = std::array::from_fn(|r| &x[(i + r.min(rows - 1)) * k..]);
                let mut acc = [[_mm256_setzero_ps(); V]; T];
                for p in 0..k {
                    let w_row = &w[p * n + j0 + jb..][..8 * V];
                    // SAFETY: `w_row` holds `8·V` values.
                    let wv: [__m256; V] = std::array::from_fn(|v| unsafe {
                        _mm256_loadu_ps(w_row.as_ptr().add(8 * v))
                    });
                    for (acc_r, x_row) in acc.iter_mut().zip(&x_rows) {
                        let xv = _mm256_set1_ps(x_row[p]);
                        for (a, &wv) in acc_r.iter_mut().zip(&wv) {
                            *a = _mm256_fmadd_ps(wv, xv, *a);
                        }
                    }
                }
                for (r, acc_r) in acc.iter().enumerate().take(rows) {
                    let at = &mut out[(i + r) * width + jb..][..8 * V];
                    for (v, &a) in acc_r.iter().enumerate() {
                        // SAFETY: `at` holds `8·V` values.
                        unsafe { _mm256_storeu_ps(at.as_mut_ptr().add(8 * v), a) };
                    }
                }
                i += T;
            }
        }
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

    /// `got` equals `expected` element by element to 1e-4 relative; `shape` is `(m, n, k)`.
    fn assert_close(got: &[f32], expected: &[f32], shape: (usize, usize, usize)) {
        assert_eq!(got.len(), expected.len(), "{shape:?}");
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                "{shape:?}: {g} vs {e}"
            );
        }
    }

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
            assert_close(&got, &expected, (m, n, k));
        }
    }

    /// Row-major `[k, n]` weights (what an optimizer step or an EMA produces) through the
    /// broadcast kernel, directly and through the dispatch, against burn's matmul: one row,
    /// partial row tiles, a partial last column chunk.
    #[test]
    fn row_major_weights_match_matmul() {
        let device = Default::default();
        for (m, n, k) in [
            (1, 16, 8),
            (1, 192, 24),
            (3, 48, 24),
            (4, 192, 576),
            (5, 272, 40),
            (15, 1536, 64),
            (64, 144, 16),
        ] {
            let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
            let expected: Vec<f32> = x.clone().matmul(w.clone()).into_data().to_vec().unwrap();
            let x_values: Vec<f32> = x.clone().into_data().to_vec().unwrap();
            let w_values: Vec<f32> = w.clone().into_data().to_vec().unwrap();
            let direct = super::kernel::columns(&x_values, m, k, &w_values, n);
            let dispatched: Vec<f32> = matmul_weight(x, w).into_data().to_vec().unwrap();
            assert_close(&direct, &expected, (m, n, k));
            assert_close(&dispatched, &expected, (m, n, k));
        }
    }

    /// A row-major weight whose width is not a multiple of 16 is no layout a kernel reads:
    /// GEMM takes it, and the product is still right.
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
