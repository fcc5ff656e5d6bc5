//! LoRA adapters and the parameter operations teachers need (frozen copies, EMA).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use opd_policy::{Architecture, Llama, LoraConfig, LoraTarget, Policy, PolicyError, params};

type B = Flex;
type A = Autodiff<Flex>;

fn probe<Bk: Backend>() -> Tensor<Bk, 2, Int> {
    Tensor::from_data(
        TensorData::new(vec![4i64, 8, 15, 16, 23, 42], [1, 6]),
        &Default::default(),
    )
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: LoraTarget::ALL.to_vec(),
        seed: 0,
    }
}

/// Gives every adapter's `B` a nonzero value so that adapters change the output.
fn perturb(model: Llama<B>) -> Llama<B> {
    let mut model = model;
    for block in &mut model.layers {
        let linear = &mut block.mlp.up_proj;
        let lora = linear.lora.as_mut().unwrap();
        let dims = lora.b.dims();
        lora.b = burn::module::Param::from_tensor(Tensor::random(
            dims,
            burn::tensor::Distribution::Uniform(-0.5, 0.5),
            &Default::default(),
        ));
    }
    model
}

#[test]
fn fresh_adapters_are_the_identity_and_switch_off_to_the_base() {
    let base = Llama::<B>::init(
        &common::tiny(Architecture::Qwen3, true),
        1,
        &Default::default(),
    );
    let reference = base.logits(probe(), &[0]);
    let adapted = base.with_lora(&lora());
    assert_eq!(
        common::max_diff(reference.clone(), adapted.logits(probe(), &[0])),
        0.0
    );
    let trained = perturb(adapted);
    let on = trained.logits(probe(), &[0]);
    assert!(common::max_diff(reference.clone(), on.clone()) > 1e-3);
    let off = trained.with_adapters_enabled(false).logits(probe(), &[0]);
    assert_eq!(common::max_diff(reference, off), 0.0);
    let merged = trained.merge_adapters();
    assert!(merged.layers[0].mlp.up_proj.lora.is_none());
    let diff = common::max_diff(on, merged.logits(probe(), &[0]));
    assert!(diff < 1e-5, "merged differs by {diff}");
}

#[test]
fn only_adapters_receive_gradients() {
    let model = Llama::<A>::init(
        &common::tiny(Architecture::Llama, false),
        2,
        &Default::default(),
    )
    .with_lora(&lora());
    let loss = model.logits(probe(), &[0]).powi_scalar(2).mean();
    let grads = loss.backward();
    let block = &model.layers[0];
    let adapter = block.self_attn.q_proj.lora.as_ref().unwrap();
    assert!(adapter.a.grad(&grads).is_some(), "A gets a gradient");
    assert!(adapter.b.grad(&grads).is_some(), "B gets a gradient");
    assert!(block.self_attn.q_proj.base.weight.grad(&grads).is_none());
    assert!(model.embed_tokens.weight.grad(&grads).is_none());
}

/// A model in training (autodiff, adapters that have had a step) merges and saves: what
/// `opd train` does with a LoRA run's final model.
#[test]
fn an_autodiff_model_with_trained_adapters_merges_and_saves() {
    let mut model = Llama::<A>::init(
        &common::tiny(Architecture::Llama, false),
        3,
        &Default::default(),
    )
    .with_lora(&lora());
    let lora = model.layers[0].mlp.up_proj.lora.as_mut().unwrap();
    let dims = lora.b.dims();
    lora.b = burn::module::Param::from_tensor(Tensor::ones(dims, &Default::default()));
    let on = model.valid().logits(probe(), &[0]);
    let merged = model.merge_adapters();
    let diff = common::max_diff(on, merged.valid().logits(probe(), &[0]));
    assert!(diff < 1e-4, "merged differs by {diff}");
    let folder = tempfile::tempdir().unwrap();
    merged
        .save_hf(folder.path(), opd_policy::SaveDtype::F32)
        .unwrap();
    assert!(folder.path().join("model.safetensors").exists());
}

#[test]
fn ema_update_mixes_parameters_and_frozen_copies_do_not_move() {
    let config = common::tiny(Architecture::Qwen2, false);
    let teacher = Llama::<B>::init(&config, 8, &Default::default());
    let student = Llama::<B>::init(&config, 15, &Default::default());
    let snapshot = params::frozen(&teacher);
    let rate = |eta| params::EmaRate::new(eta).unwrap();
    let mixed = params::ema_update(teacher.clone(), &student, rate(0.1)).unwrap();
    let get = |m: &Llama<B>| m.layers[1].self_attn.k_proj.base.weight.val();
    let expected = get(&teacher) * 0.9 + get(&student) * 0.1;
    assert!(common::max_diff(expected, get(&mixed)) < 1e-6);
    let bias = |m: &Llama<B>| {
        m.layers[0]
            .self_attn
            .q_proj
            .base
            .bias
            .as_ref()
            .unwrap()
            .val()
    };
    let expected = bias(&teacher) * 0.9 + bias(&student) * 0.1;
    assert!(common::max_diff(expected, bias(&mixed)) < 1e-6);
    assert_eq!(common::max_diff(get(&snapshot), get(&teacher)), 0.0);
    // η = 0 keeps the teacher, η = 1 copies the student.
    let kept = params::ema_update(teacher.clone(), &student, rate(0.0)).unwrap();
    assert!(common::max_diff(kept.logits(probe(), &[0]), teacher.logits(probe(), &[0])) < 1e-6);
    let copied = params::ema_update(teacher, &student, rate(1.0)).unwrap();
    assert!(common::max_diff(copied.logits(probe(), &[0]), student.logits(probe(), &[0])) < 1e-6);
}

/// A teacher of another architecture, or a rate outside [0, 1], is a typed error.
#[test]
fn ema_update_rejects_mismatched_models_and_bad_rates() {
    let device = Default::default();
    let student = Llama::<B>::init(&common::tiny(Architecture::Qwen2, false), 1, &device);
    let other = Llama::<B>::init(&common::tiny(Architecture::Llama, false), 2, &device);
    let rate = params::EmaRate::new(0.1).unwrap();
    let err = params::ema_update(other, &student, rate).unwrap_err();
    assert!(matches!(err, PolicyError::ParameterMismatch(_)), "{err}");
    let mut wider = common::tiny(Architecture::Qwen2, false);
    wider.intermediate_size += 8;
    let wider = Llama::<B>::init(&wider, 3, &device);
    let err = params::ema_update(wider, &student, rate).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    let err = params::EmaRate::new(1.5).unwrap_err();
    assert!(matches!(err, PolicyError::InvalidArgument(_)), "{err}");
}

#[test]
fn a_valid_copy_of_an_autodiff_model_is_a_stop_gradient_teacher() {
    let student = Llama::<A>::init(
        &common::tiny(Architecture::Llama, true),
        4,
        &Default::default(),
    );
    let teacher: Llama<B> = student.valid();
    let diff = common::max_diff(
        student.logits(probe(), &[0]).inner(),
        teacher.logits(probe(), &[0]),
    );
    // Autodiff runs attention through burn's portable fallback, Flex through its fused kernel.
    assert!(diff < 1e-4, "{diff}");
}
