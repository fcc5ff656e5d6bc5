//! Left-padded batches and the KV cache on tiny random models of every variant: a padded row
//! computes what it computes alone, and incremental decoding equals the full forward.

mod common;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData, s};
use opd_policy::{Llama, Policy};

type B = Flex;

fn ids(rows: &[Vec<i64>]) -> Tensor<B, 2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), rows[0].len()]),
        &Default::default(),
    )
}

fn rows() -> Vec<Vec<i64>> {
    vec![
        vec![3, 14, 15, 9, 26, 5, 35],
        vec![8, 9, 7],
        vec![60, 1, 2, 3, 4],
    ]
}

#[test]
fn left_padded_rows_match_their_unpadded_forward() {
    for config in common::tiny_variants() {
        let model = Llama::<B>::init(&config, 8, &Default::default());
        let rows = rows();
        let width = rows.iter().map(Vec::len).max().unwrap();
        let padding: Vec<usize> = rows.iter().map(|r| width - r.len()).collect();
        let padded: Vec<Vec<i64>> = rows
            .iter()
            .map(|r| [vec![0; width - r.len()], r.clone()].concat())
            .collect();
        let batch = model.logits(ids(&padded), &padding);
        for (b, row) in rows.iter().enumerate() {
            let alone = model.logits(ids(std::slice::from_ref(row)), &[0]);
            let in_batch = batch.clone().slice([b..b + 1, padding[b]..width]);
            let diff = common::max_diff(alone, in_batch);
            assert!(diff < 1e-5, "{config:?} row {b}: {diff}");
        }
    }
}

#[test]
fn cached_decoding_of_a_padded_batch_matches_the_full_forward() {
    for config in common::tiny_variants() {
        let model = Llama::<B>::init(&config, 15, &Default::default());
        // Prompts of lengths 4, 2, 3 left-padded to 4, then 3 decoded tokens each.
        let full = vec![
            vec![1, 2, 3, 4, 10, 11, 12],
            vec![0, 0, 5, 6, 13, 14, 15],
            vec![0, 7, 8, 9, 16, 17, 18],
        ];
        let padding = vec![0, 2, 1];
        let expected = model.logits(ids(&full), &padding);
        let mut cache = model.new_cache(padding.clone());
        let prompt: Vec<Vec<i64>> = full.iter().map(|r| r[..4].to_vec()).collect();
        let mut parts = vec![model.logits_cached(ids(&prompt), &mut cache)];
        for t in 4..7 {
            let step: Vec<Vec<i64>> = full.iter().map(|r| vec![r[t]]).collect();
            parts.push(model.logits_cached(ids(&step), &mut cache));
        }
        assert_eq!(cache.len(), 7);
        let cached = Tensor::cat(parts, 1);
        for (b, &pad) in padding.iter().enumerate() {
            let diff = common::max_diff(
                expected.clone().slice([b..b + 1, pad..7]),
                cached.clone().slice([b..b + 1, pad..7]),
            );
            assert!(diff < 1e-5, "{config:?} row {b}: {diff}");
        }
    }
}

#[test]
fn retained_rows_decode_as_before() {
    let config = common::tiny(opd_policy::Architecture::Llama, true);
    let model = Llama::<B>::init(&config, 22, &Default::default());
    let prompt = vec![vec![1, 2, 3], vec![0, 4, 5], vec![6, 7, 8]];
    let padding = vec![0, 1, 0];
    let mut all = model.new_cache(padding.clone());
    model.logits_cached(ids(&prompt), &mut all);
    let mut kept = all.clone();
    kept.retain_rows(&[2, 1]);
    assert_eq!(kept.padding(), &[0, 1]);
    let full = model.logits_cached(ids(&[vec![9], vec![10], vec![11]]), &mut all);
    let part = model.logits_cached(ids(&[vec![11], vec![10]]), &mut kept);
    let diff = common::max_diff(
        Tensor::cat(vec![full.clone().slice(s![2..3]), full.slice(s![1..2])], 0),
        part,
    );
    assert!(diff < 1e-6, "{diff}");
}
