//! Backend parity: tiny models of every variant give the same logits on wgpu as on flex, with
//! padding and through the KV cache. Run with
//! `cargo test -p opd-policy --features wgpu --test wgpu_parity`.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{Flex, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use opd_policy::{Llama, Policy, SaveDtype};

fn ids<B: Backend>(rows: &[[i64; 5]]) -> Tensor<B, 2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), 5]), &Default::default())
}

#[test]
fn logits_match_flex_on_wgpu() {
    let rows = [[3, 9, 27, 40, 1], [0, 0, 5, 6, 7]];
    let padding = [0, 2];
    for (i, config) in common::tiny_variants().into_iter().enumerate() {
        let flex = Llama::<Flex>::init(&config, i as u64, &Default::default());
        let dir = std::env::temp_dir().join(format!("opd-wgpu-{i}-{}", std::process::id()));
        flex.save_hf(&dir, SaveDtype::F32).unwrap();
        let wgpu = Llama::<Wgpu>::from_hf_folder(&dir, &Default::default()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let expected: Vec<f32> = flex
            .logits(ids(&rows), &padding)
            .into_data()
            .to_vec()
            .unwrap();
        let full: Vec<f32> = wgpu
            .logits(ids(&rows), &padding)
            .into_data()
            .to_vec()
            .unwrap();
        let mut cache = wgpu.new_cache(padding.to_vec());
        let first = wgpu.logits_cached(
            Tensor::from_data(
                TensorData::new(vec![3i64, 9, 27, 40, 0, 0, 5, 6], [2, 4]),
                &Default::default(),
            ),
            &mut cache,
        );
        let last = wgpu.logits_cached(
            Tensor::from_data(TensorData::new(vec![1i64, 7], [2, 1]), &Default::default()),
            &mut cache,
        );
        let cached: Vec<f32> = Tensor::cat(vec![first, last], 1)
            .into_data()
            .to_vec()
            .unwrap();
        for (name, got) in [("full", &full), ("cached", &cached)] {
            let worst = expected
                .iter()
                .zip(got.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "{config:?} {name}: {worst}");
        }
    }
}
