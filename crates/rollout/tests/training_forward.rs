//! The log-probs recorded while sampling (decode through the KV cache and the fast CPU
//! kernels) against the training forward (autodiff model, full sequences, portable ops) and
//! against `score` (no-grad full forward, fast kernels), on SmolLM2. Measured 2026-11-23 over
//! 359 tokens: max |Δ| 2.2e-5, mean 3.5e-6 (training forward); 1.8e-5 and 2.0e-6 (`score`).
//! The bound below, max 2e-4 and mean 2e-5, leaves about a 6× margin.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::activation::log_softmax;
use opd_policy::{Message, Policy};
use opd_rollout::{SamplingParams, ScoreOptions, generate, score};

type A = Autodiff<Flex>;

/// Max and mean `|a − b|` over the response tokens of every row.
fn deltas(recorded: &[Vec<f32>], other: &[f32], width: usize) -> (f32, f32, usize) {
    let (mut max, mut sum, mut count) = (0.0f32, 0.0f64, 0);
    for (b, row) in recorded.iter().enumerate() {
        for (t, &lp) in row.iter().enumerate() {
            let d = (lp - other[b * width + t]).abs();
            max = max.max(d);
            sum += d as f64;
            count += 1;
        }
    }
    (max, (sum / count as f64) as f32, count)
}

#[test]
fn sampled_log_probs_match_the_training_forward_on_smollm2() {
    let path = common::smollm2_path();
    let (student, tok) = opd_policy::load::<A>(&path, &Default::default()).unwrap();
    // Rollouts run on the no-grad copy (same weights, fast kernels).
    let rollout_model = student.valid();
    let prompts: Vec<Vec<u32>> = ["Tell me about the moon.", "What is 17 times 3?"]
        .iter()
        .map(|q| {
            let text = tok.apply_chat_template(&[Message::user(*q)], true).unwrap();
            tok.encode(&text).unwrap()
        })
        .collect();
    let params = SamplingParams {
        n: 4,
        max_new_tokens: 48,
        seed: 11,
        ..SamplingParams::default()
    };
    let batch = generate(&rollout_model, &tok, &prompts, &params).unwrap();
    let sequences = batch.sequences().unwrap();
    let recorded: Vec<Vec<f32>> = batch.samples.iter().map(|s| s.logprobs.clone()).collect();
    let width = sequences.response_width();

    // The training forward: autodiff model, logits at the response positions.
    let logits = student.response_logits(&sequences).unwrap();
    let device = logits.device();
    let ids = sequences.response_ids::<A>(&device).unsqueeze_dim::<3>(2);
    let trained: Vec<f32> = log_softmax(logits, 2)
        .gather(2, ids)
        .squeeze_dim::<2>(2)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let (max, mean, count) = deltas(&recorded, &trained, width);
    eprintln!("sampling vs training forward: {count} tokens, max |Δ| {max:.2e}, mean {mean:.2e}");
    assert!(count >= 150, "only {count} tokens sampled");
    assert!(max < 2e-4 && mean < 2e-5, "max {max}, mean {mean}");

    // π_old recomputed without a graph (`score` on the no-grad copy).
    let scored: Vec<f32> = score(&rollout_model, &sequences, ScoreOptions::default())
        .unwrap()
        .logprobs
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let (max, mean, _) = deltas(&recorded, &scored, width);
    eprintln!("sampling vs score: max |Δ| {max:.2e}, mean {mean:.2e}");
    assert!(max < 2e-4 && mean < 2e-5, "max {max}, mean {mean}");
}
