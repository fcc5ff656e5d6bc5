//! The CPU backend's matrix products write every element of their output: the workspace's
//! burn-flex (`third_party/burn-flex`) does not zero a product's buffer before the GEMM, so a
//! product that skipped an element would show whatever the allocator's memory held. The model's
//! own weight products (`opd_policy::lora::linear_forward`: the `gemm` crate, or OpenBLAS with the
//! `openblas` feature) agree with burn's for every weight layout the loaders produce.

use burn::backend::Flex;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Distribution, Tensor, TensorData};
use opd_policy::lora::linear_forward;

fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

#[test]
fn products_overwrite_recycled_memory_at_every_shape() {
    let device = Default::default();
    for (m, k, n) in [
        (1, 1, 4),
        (1, 7, 16),
        (4, 1, 4),
        (3, 5, 8),
        (17, 33, 20),
        (64, 96, 129),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        for _ in 0..4 {
            // Freed NaNs of the output's size: the next buffer of that size is likely theirs.
            drop(std::hint::black_box(vec![f32::NAN; m * n]));
            let lhs = Tensor::<Flex, 2>::from_data(TensorData::new(a.clone(), [m, k]), &device);
            let rhs = Tensor::<Flex, 2>::from_data(TensorData::new(b.clone(), [k, n]), &device);
            // The same values as a transposed view (strides `[1, k]`), as weights are kept.
            let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let rhs_t = Tensor::<Flex, 2>::from_data(TensorData::new(b_t, [n, k]), &device);
            for (what, product) in [
                ("row-major", lhs.clone().matmul(rhs.clone())),
                ("transposed view", lhs.clone().matmul(rhs_t.transpose())),
            ] {
                let c = product.into_data().into_vec::<f32>().unwrap();
                assert_eq!(c, naive(&a, &b, m, k, n), "{what} {m}×{k}×{n}");
            }
        }
    }
}

/// 70 rows (past the one-row kernel: `gemm`, or `sgemm` with `openblas`), against burn's matmul
/// for a row-major weight, a transposed one (as GGUF and safetensors weights are kept) and a
/// strided slice of one.
#[test]
fn weight_products_match_matmul_for_every_layout() {
    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    let (m, k, n) = (70, 24, 33);
    let x = Tensor::<Flex, 2>::random([m, k], normal, &device);
    let rows = Tensor::<Flex, 2>::random([n, k], normal, &device);
    let wide = Tensor::<Flex, 2>::random([k, n + 5], normal, &device);
    let weights = [
        (
            "row-major",
            Tensor::<Flex, 2>::random([k, n], normal, &device),
        ),
        ("transposed", rows.transpose()),
        ("strided slice", wide.slice([0..k, 2..n + 2])),
    ];
    for (layout, weight) in weights {
        let expected = x
            .clone()
            .matmul(weight.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let linear = Linear {
            weight: Param::from_tensor(weight),
            bias: None,
        };
        let got = linear_forward(&linear, x.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                "{layout}: {g} vs {e}"
            );
        }
    }
}
