//! SmolLM2 with its linear layers' weights kept in bf16 (`Llama::with_frozen_precision`)
//! against the f32 model: logits (largest difference, KL per token), greedy continuations,
//! cached decoding, and the LoRA adapters' gradients (cosine, relative norm) through the bf16
//! products' backward.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Distribution};
use opd_policy::{ChatTokenizer, FrozenPrecision, Llama, LoraConfig, LoraTarget, Message, Policy};

type B = Flex;
type A = Autodiff<Flex>;

fn ids_tensor<Bk: Backend>(ids: &[u32]) -> Tensor<Bk, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(
        TensorData::new(ids.clone(), [1, ids.len()]),
        &Default::default(),
    )
}

fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// A chat prompt and a reply, the text the logits are compared on.
fn text_ids(tok: &ChatTokenizer) -> Vec<u32> {
    let text = tok
        .apply_chat_template(
            &[
                Message::user("What is 17 + 25? Explain step by step."),
                Message::assistant("17 + 25: 7 + 5 = 12, write 2 carry 1; 1 + 2 + 1 = 4. So 42."),
            ],
            false,
        )
        .unwrap();
    tok.encode(&text).unwrap()
}

fn greedy<Bk: Backend, P: Policy<Bk>>(model: &P, tok: &ChatTokenizer, steps: usize) -> Vec<u32> {
    let text = tok
        .apply_chat_template(&[Message::user("What is the capital of France?")], true)
        .unwrap();
    let mut cache = model.new_cache(vec![0]);
    let mut logits = model.logits_cached(ids_tensor(&tok.encode(&text).unwrap()), &mut cache);
    let mut answer = Vec::new();
    for _ in 0..steps {
        let len = logits.dims()[1];
        let next = logits
            .slice([0..1, len - 1..len])
            .reshape([-1])
            .argmax(0)
            .into_scalar();
        let next = next.elem::<i64>() as u32;
        answer.push(next);
        logits = model.logits_cached(ids_tensor(&[next]), &mut cache);
    }
    answer
}

/// `KL(p ‖ q)` per token of two `[1, T, V]` logits.
fn kl_per_token(p: Tensor<B, 3>, q: Tensor<B, 3>) -> f32 {
    let (lp, lq) = (log_softmax(p, 2), log_softmax(q, 2));
    (lp.clone().exp() * (lp - lq))
        .sum_dim(2)
        .mean()
        .into_scalar()
        .elem()
}

#[test]
fn bf16_weights_keep_smollm2s_logits_and_greedy_answers() {
    let file = common::smollm2();
    let tok = ChatTokenizer::from_gguf(&file).unwrap();
    let f32_model = Llama::<B>::from_gguf(&file, &Default::default()).unwrap();
    let bf16_model = f32_model
        .clone()
        .with_frozen_precision(FrozenPrecision::Bf16);
    let projection = &bf16_model.layers[3].mlp.down_proj.base.weight;
    assert_eq!(projection.val().dtype(), DType::BF16);
    assert_eq!(bf16_model.embed_tokens.weight.val().dtype(), DType::F32);

    let ids = text_ids(&tok);
    let logits = |m: &Llama<B>| m.logits(ids_tensor(&ids), &[0]);
    let (exact, low) = (logits(&f32_model), logits(&bf16_model));
    let max_diff = common::max_diff(exact.clone(), low.clone());
    // KL(p_f32 ‖ p_bf16) per token.
    let (lp, lq) = (log_softmax(exact, 2), log_softmax(low.clone(), 2));
    let kl: f32 = (lp.clone().exp() * (lp - lq))
        .sum_dim(2)
        .mean()
        .into_scalar()
        .elem();
    eprintln!(
        "bf16 against f32 over {} tokens: max |Δ logit| {max_diff:.3}, KL {kl:.2e} nats/token",
        ids.len()
    );
    assert!(max_diff < 1.0, "max |Δ logit| {max_diff}");
    assert!(kl < 2e-3, "KL per token {kl}");

    // The bf16 model's cached decoding agrees with its own full forward as closely as with the
    // f32 model: the decode and prefill attention kernels differ in their last f32 bits, which
    // the rounding of activations to bf16 turns into bf16 steps now and then.
    let mut cache = bf16_model.new_cache(vec![0]);
    let mut parts = vec![bf16_model.logits_cached(ids_tensor(&ids[..7]), &mut cache)];
    for &id in &ids[7..] {
        parts.push(bf16_model.logits_cached(ids_tensor(&[id]), &mut cache));
    }
    let cached = kl_per_token(low, Tensor::cat(parts, 1));
    eprintln!("bf16 cached decoding against its full forward: KL {cached:.2e} nats/token");
    assert!(cached < 2e-3, "bf16 cached against full: KL {cached}");

    let (a, b) = (greedy(&f32_model, &tok, 16), greedy(&bf16_model, &tok, 16));
    assert_eq!(
        a,
        b,
        "{:?} against {:?}",
        tok.decode(&a, true),
        tok.decode(&b, true)
    );
}

/// A model whose every weight required a gradient (no LoRA: a teacher built from a student, or
/// a model loaded on the autodiff backend) converts too: its projections become frozen bf16
/// leaves, and a backward reaches the parameters that still train.
#[test]
fn a_model_without_adapters_converts_on_the_autodiff_backend() {
    let config = common::tiny(opd_policy::Architecture::Llama, true);
    let model = Llama::<A>::init(&config, 5, &Default::default())
        .with_frozen_precision(FrozenPrecision::Bf16);
    let q = &model.layers[0].self_attn.q_proj.base.weight;
    assert_eq!(q.val().dtype(), DType::BF16);
    assert!(!q.is_require_grad());
    let logits = model.logits(ids_tensor(&[1, 2, 3, 4]), &[0]);
    let grads = logits.sum().backward();
    assert!(model.embed_tokens.weight.grad(&grads).is_some());
    assert!(q.grad(&grads).is_none());
}

/// The adapters' gradients, concatenated in visit order.
struct AdapterGrads<'a>(
    &'a <A as burn::tensor::backend::AutodiffBackend>::Gradients,
    Vec<f32>,
);

impl ModuleVisitor<A> for AdapterGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        if let Some(grad) = param.val().grad(self.0) {
            self.1.extend(host(grad));
        }
    }
}

fn adapter_grads(model: &Llama<A>, ids: &[u32]) -> Vec<f32> {
    let logits = model.logits(ids_tensor(ids), &[0]);
    let len = ids.len();
    let targets: Vec<i64> = ids[1..].iter().map(|&i| i as i64).collect();
    let targets = Tensor::<A, 3, Int>::from_data(
        TensorData::new(targets, [1, len - 1, 1]),
        &Default::default(),
    );
    let log_probs = log_softmax(logits.slice([0..1, 0..len - 1]), 2);
    let nll = -log_probs.gather(2, targets).mean();
    let grads = nll.backward();
    let mut visitor = AdapterGrads(&grads, Vec::new());
    model.visit(&mut visitor);
    visitor.1
}

#[test]
fn lora_gradients_through_bf16_weights_match_f32() {
    let file = common::smollm2();
    let tok = ChatTokenizer::from_gguf(&file).unwrap();
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        targets: LoraTarget::ALL.to_vec(),
        seed: 3,
    };
    let mut model = Llama::<A>::from_gguf(&file, &Default::default())
        .unwrap()
        .with_lora(&lora);
    // `B ≠ 0`, so that `A`'s gradient passes through the frozen products' backward too.
    for block in &mut model.layers {
        for linear in [&mut block.self_attn.q_proj, &mut block.mlp.down_proj] {
            let adapter = linear.lora.as_mut().unwrap();
            let dims = adapter.b.dims();
            adapter.b = Param::from_tensor(Tensor::random(
                dims,
                Distribution::Uniform(-0.02, 0.02),
                &Default::default(),
            ));
        }
    }
    let ids = text_ids(&tok);
    let exact = adapter_grads(&model, &ids);
    let low = adapter_grads(
        &model.clone().with_frozen_precision(FrozenPrecision::Bf16),
        &ids,
    );
    assert_eq!(exact.len(), low.len());
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
    };
    let cosine = dot(&exact, &low) / (dot(&exact, &exact) * dot(&low, &low)).sqrt();
    let diff: Vec<f32> = exact.iter().zip(&low).map(|(a, b)| a - b).collect();
    let relative = (dot(&diff, &diff) / dot(&exact, &exact)).sqrt();
    eprintln!("LoRA gradients, bf16 against f32: cosine {cosine:.5}, relative error {relative:.4}");
    assert!(cosine > 0.995, "cosine {cosine}");
    assert!(relative < 0.1, "relative error {relative}");
}
