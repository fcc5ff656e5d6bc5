//! `y = x·W` through the system's OpenBLAS `sgemm` (feature `openblas`), for products with
//! more rows than [`crate::row_matmul`]'s kernel takes: prefill and training batches. On this
//! project's 2-core reference machine it runs about 2× the `gemm` crate that burn's CPU
//! backend calls (see `docs/performance.md`).

use burn::prelude::*;
use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, cblas_sgemm};

use crate::flex_tensor::{from_f32, to_flex};

// Links `libopenblas`; the declarations come from `cblas-sys`.
#[link(name = "openblas")]
unsafe extern "C" {}

/// `x·W` for `x` `[m, k]` contiguous and `W` `[k, n]` either row-major or the transposed view
/// of a row-major `[n, k]` matrix, on CPU f32 tensors; `None` otherwise.
pub fn try_sgemm<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let ([m, k], [k_w, n]) = (x.dims(), weight.dims());
    if k != k_w || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let (x_flex, w_flex) = (to_flex(x.clone())?, to_flex(weight.clone())?);
    let x_values = x_flex.as_slice::<f32>()?;
    let layout = w_flex.layout();
    let (transpose, leading) = match *layout.strides() {
        [1, ld] if ld >= k as isize => (CBLAS_TRANSPOSE::CblasTrans, ld as usize),
        [ld, 1] if ld >= n as isize => (CBLAS_TRANSPOSE::CblasNoTrans, ld as usize),
        _ => return None,
    };
    let (rows, cols) = match transpose {
        CBLAS_TRANSPOSE::CblasTrans => (n, k),
        _ => (k, n),
    };
    let start = layout.start_offset();
    let w_values = w_flex
        .storage::<f32>()
        .get(start..start + (rows - 1) * leading + cols)?;
    let dim = |v: usize| i32::try_from(v).ok();
    let (mi, ni, ki, ldw) = (dim(m)?, dim(n)?, dim(k)?, dim(leading)?);
    let mut y = vec![0f32; m * n];
    // SAFETY: `x` holds `m·k` values (row-major, leading dimension `k`); `W`'s storage from
    // its first element holds `rows` rows of `leading` values, the last of them `cols` long,
    // which is what `sgemm` reads with `transpose` and `ldw`; `y` holds `m·n` values.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasRowMajor,
            CBLAS_TRANSPOSE::CblasNoTrans,
            transpose,
            mi,
            ni,
            ki,
            1.0,
            x_values.as_ptr(),
            ki,
            w_values.as_ptr(),
            ldw,
            0.0,
            y.as_mut_ptr(),
            ni,
        );
    }
    from_f32(y, [m, n])
}
