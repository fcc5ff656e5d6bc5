//! SmolLM2 logits against an independent numpy implementation (scripts/reference/llama_logits.py),
//! which runs the GGUF weights as stored with llama.cpp's interleaved RoPE: agreement checks
//! the forward pass and the q/k un-permutation together.

mod common;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use opd_policy::Llama;

#[test]
fn smollm2_logits_match_the_numpy_reference() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2_logits.json")).unwrap();
    let tokens: Vec<i64> = fixture["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    let device = Default::default();
    let model = Llama::<Flex>::from_gguf(&common::smollm2(), &device).unwrap();
    let config = model.config.clone();
    let ids = Tensor::<Flex, 2, Int>::from_data(
        TensorData::new(tokens.clone(), [1, tokens.len()]),
        &device,
    );
    let logits = model.forward(ids);
    assert_eq!(logits.dims(), [1, tokens.len(), config.vocab_size]);
    let logits: Vec<f32> = logits.into_data().to_vec().unwrap();
    let mut worst = 0f64;
    for (pos, expected) in fixture["positions"].as_object().unwrap() {
        let pos: usize = pos.parse().unwrap();
        let row = &logits[pos * config.vocab_size..(pos + 1) * config.vocab_size];
        let ids = expected["ids"].as_array().unwrap();
        let values = expected["logits"].as_array().unwrap();
        // The reference's argmax is ours too.
        let argmax = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(
            argmax as u64,
            ids[0].as_u64().unwrap(),
            "argmax at position {pos}"
        );
        for (id, value) in ids.iter().zip(values) {
            let ours = row[id.as_u64().unwrap() as usize] as f64;
            worst = worst.max((ours - value.as_f64().unwrap()).abs());
        }
    }
    assert!(worst < 1e-3, "largest top-20 logit difference {worst}");
    eprintln!("largest top-20 logit difference against numpy: {worst:.2e}");
}
