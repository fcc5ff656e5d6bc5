//! One SFT step of SmolLM2 on `Autodiff<Flex>`, one configuration per process (for
//! `peer/compare_sft_step.py`): the training forward of a [`SequenceBatch`] (a 1-token context
//! and a `T − 1`-token response per row, so the NLL covers the `T − 1` next-token predictions
//! of a `T`-token sequence, as a causal-LM loss does), the NLL through the chunked closed-form
//! log-prob kernel, backward, and an AdamW step. Prints one JSON line with the mean time of
//! each phase over the measured steps (after one warm-up step), the loss before any update
//! (the same computation as the PyTorch script's), tokens/s (`B·T` per step) and the peak
//! resident memory. AdamW (`FusedAdamW`, what the trainers run) with burn's defaults (β 0.9,
//! 0.999, ε 1e-5, weight decay 1e-4), learning rate 1e-5.
//!
//! The NLL reads the final hidden states through the output head fused with the log-probs
//! (`sequence_log_probs_from_hidden_with`, told that the loss weighs every token alike, so the
//! head's gradient is formed in the forward: what the trainers do), or with `logits` as the fourth
//! argument through the whole `[B, T − 1, V]` logits (the unfused path, for comparison).
//!
//! With a fifth argument `VOCAB`, the model is SmolLM2's shape with a vocabulary of `VOCAB`
//! tokens and random weights (151936: Qwen3's vocabulary), for the memory of a large head.
//!
//! With `OPD_LORA_RANK=r` in the environment, only LoRA adapters of rank `r` on every
//! projection train (the head stays frozen); with `OPD_FROZEN_PRECISION=bf16` too, the frozen
//! base weights of the projections are kept in bf16 (`Llama::with_frozen_precision`).
//!
//! usage: peer_sft_step BATCH SEQ_LEN [STEPS] [fused|logits] [VOCAB]

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::optim::{GradientsParams, Optimizer};
use opd_divergences::HeadOptions;
use opd_divergences::sampled::{sequence_log_probs, sequence_log_probs_from_hidden_with};
use opd_policy::{FusedAdamW, Llama, LoraConfig, LoraTarget, Policy, SequenceBatch};

#[path = "peak_rss.rs"]
mod peak_rss;
use peak_rss::peak_rss_mb;

type A = Autodiff<Flex>;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Token ids of row `b`: a fixed pseudo-random sequence, the same as the PyTorch script's.
fn row(b: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((b * 7_919 + i * 104_729 + 13) % vocab) as u32)
        .collect()
}

fn main() {
    opd_policy::allocator::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i).map_or(default, |a| {
            a.parse().expect("BATCH SEQ_LEN [STEPS] are numbers")
        })
    };
    let (batch, len, steps) = (number(0, 2), number(1, 128), number(2, 3));
    let fused = args.get(3).is_none_or(|mode| mode != "logits");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    let (mut model, _) =
        opd_policy::load::<A>(format!("{root}{MODEL}"), &Default::default()).expect("SmolLM2");
    if let Some(vocab) = args.get(4) {
        let mut config = model.config.clone();
        config.vocab_size = vocab.parse().expect("VOCAB is a number");
        model = Llama::init(&config, 0, &Default::default());
    }
    if let Ok(rank) = std::env::var("OPD_LORA_RANK") {
        model = model.with_lora(&LoraConfig {
            rank: rank.parse().expect("OPD_LORA_RANK is a number"),
            alpha: 32.0,
            targets: LoraTarget::ALL.to_vec(),
            seed: 0,
        });
        if let Ok(precision) = std::env::var("OPD_FROZEN_PRECISION") {
            let precision = precision
                .parse()
                .expect("OPD_FROZEN_PRECISION is f32 or bf16");
            model = model.with_frozen_precision(precision);
        }
    }
    let vocab = model.vocab_size();
    let rows: Vec<Vec<u32>> = (0..batch).map(|b| row(b, len, vocab)).collect();
    let sequences = SequenceBatch::new(
        rows.iter().map(|r| r[..1].to_vec()).collect(),
        rows.iter().map(|r| r[1..].to_vec()).collect(),
    )
    .unwrap();
    let device = Default::default();
    let (ids, mask) = (
        sequences.response_ids::<A>(&device),
        sequences.response_mask::<A>(&device),
    );
    let mut optimizer = FusedAdamW::new(0.9, 0.999, 1e-5, 1e-4).init::<A, Llama<A>>();
    let (mut forward, mut backward, mut optim, mut loss_value) = (0.0, 0.0, 0.0, 0.0);
    for step in 0..=steps {
        let started = Instant::now();
        let log_probs = if fused {
            let hidden = model.response_hidden(&sequences).unwrap();
            let head = model
                .output_head()
                .expect("SmolLM2's head is its embedding");
            // The token-mean NLL weighs every response token alike: the head, told so, forms
            // its gradient in the forward.
            let linear = Some(mask.clone().float());
            let options = HeadOptions {
                observe: None,
                linear,
            };
            sequence_log_probs_from_hidden_with(
                hidden,
                head,
                ids.clone(),
                mask.clone(),
                1.0,
                options,
            )
        } else {
            let logits = model.response_logits(&sequences).unwrap();
            sequence_log_probs(logits, ids.clone(), mask.clone(), 1.0, 32)
        }
        .expect("log-probs");
        let loss = log_probs.sum().neg() / sequences.response_tokens() as f64;
        let t_forward = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let loss_now = loss.clone();
        let grads = loss.backward();
        let t_backward = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let grads = GradientsParams::from_grads(grads, &model);
        model = optimizer.step(1e-5, model, grads);
        let t_optim = started.elapsed().as_secs_f64();
        eprintln!(
            "step {step}: forward {t_forward:.2} s, backward {t_backward:.2} s, AdamW {t_optim:.2} s"
        );
        if step == 0 {
            loss_value = loss_now.into_scalar();
        } else {
            forward += t_forward / steps as f64;
            backward += t_backward / steps as f64;
            optim += t_optim / steps as f64;
        }
    }
    let total = forward + backward + optim;
    println!(
        "{{\"batch\": {batch}, \"seq_len\": {len}, \"fused\": {fused}, \"forward_s\": {forward:.3}, \
         \"backward_s\": {backward:.3}, \"optimizer_s\": {optim:.3}, \"step_s\": {total:.3}, \
         \"tok_s\": {:.1}, \"loss\": {loss_value:.4}, \"peak_mb\": {:.0}}}",
        (batch * len) as f64 / total,
        peak_rss_mb()
    );
}
