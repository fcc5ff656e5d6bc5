//! SmolLM2 generation throughput, one configuration per process (for `peer/compare_generate.py`):
//! prefill tokens/s (the best of 3 prefills of the batch, next-token logits of the last slot
//! only, as generation needs), decode tokens/s through the KV cache, the same decode without a
//! cache, and the peak resident memory. Prints one JSON line.
//!
//! usage: peer_generate BATCH NEW_TOKENS [NO_CACHE_STEPS]

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use opd_policy::{Message, Policy};
use opd_rollout::{SamplingParams, generate};

#[path = "peak_rss.rs"]
mod peak_rss;
use peak_rss::peak_rss_mb;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const QUESTION: &str = "Explain in a few sentences why the sky is blue and why sunsets are red.";

fn main() {
    opd_policy::allocator::tune();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let (batch, new_tokens) = (args[0], args[1]);
    let no_cache_steps = args.get(2).copied().unwrap_or(0);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    let (model, mut tokenizer) =
        opd_policy::load::<Flex>(format!("{root}{MODEL}"), &Default::default()).expect("SmolLM2");
    // `OPD_FROZEN_PRECISION=bf16`: the linear layers' weights in bf16.
    let model = match std::env::var("OPD_FROZEN_PRECISION") {
        Ok(p) => model.with_frozen_precision(p.parse().expect("f32 or bf16")),
        Err(_) => model,
    };
    // Every row generates exactly `new_tokens`, as transformers' `min_new_tokens` does.
    tokenizer.special.eos.clear();
    let text = tokenizer
        .apply_chat_template(&[Message::user(QUESTION)], true)
        .unwrap();
    let prompt = tokenizer.encode(&text).unwrap();
    let prompts = vec![prompt.clone(); batch];
    let params = SamplingParams::greedy(new_tokens);
    // Warm-up, then the measured run.
    generate(
        &model,
        &tokenizer,
        &prompts[..1],
        &SamplingParams::greedy(4),
    )
    .unwrap();
    let prefill = (0..3)
        .map(|_| {
            let started = Instant::now();
            let ids = prompt
                .iter()
                .map(|&t| t as i64)
                .cycle()
                .take(batch * prompt.len());
            let ids = Tensor::<Flex, 2, Int>::from_data(
                TensorData::new(ids.collect(), [batch, prompt.len()]),
                &Default::default(),
            );
            let mut cache = model.new_cache(vec![0; batch]);
            let hidden = model.hidden_cached(ids, &mut cache);
            let last = hidden.slice([0..batch, prompt.len() - 1..prompt.len()]);
            model.project(last).into_data();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let rollout = generate(&model, &tokenizer, &prompts, &params).unwrap();
    let stats = rollout.stats;
    let mut no_cache = 0.0;
    if no_cache_steps > 0 {
        let mut rows: Vec<Vec<i64>> = vec![prompt.iter().map(|&t| t as i64).collect(); batch];
        let started = Instant::now();
        for _ in 0..no_cache_steps {
            let width = rows[0].len();
            let flat: Vec<i64> = rows.iter().flatten().copied().collect();
            let ids = Tensor::<Flex, 2, Int>::from_data(
                TensorData::new(flat, [batch, width]),
                &Default::default(),
            );
            let logits = model.logits(ids, &vec![0; batch]);
            let next = logits.slice([0..batch, width - 1..width]).argmax(2);
            let next: Vec<i64> = next.into_data().convert::<i64>().into_vec().unwrap();
            for (row, token) in rows.iter_mut().zip(next) {
                row.push(token);
            }
        }
        no_cache = (batch * no_cache_steps) as f64 / started.elapsed().as_secs_f64();
    }
    println!(
        "{{\"batch\": {batch}, \"prompt_len\": {}, \"new_tokens\": {new_tokens}, \
         \"prefill_tok_s\": {:.1}, \"decode_tok_s\": {:.1}, \"no_cache_tok_s\": {:.1}, \"peak_mb\": {:.0}}}",
        prompt.len(),
        (batch * prompt.len()) as f64 / prefill,
        stats.decode_tokens_per_second(),
        no_cache,
        peak_rss_mb()
    );
}
