//! The output head fused with the losses trains exactly as the formed logits do: the same
//! per-step losses, divergences and diagnostics, and the same weights after a few steps, for
//! the methods whose loss is a divergence over the vocabulary (OPSD, SDPO with the student's
//! top-k and a trust-region teacher, OPD's divergence form with another model as the teacher)
//! and for SFT's log-probs.

#[path = "support/toy.rs"]
mod toy;

use burn::module::AutodiffModule;
use opd_policy::Llama;
use opd_teachers::External;
use opd_trainers::{
    Objective, OpdConfig, OpdForm, OpsdConfig, OutputHead, SdpoConfig, SftConfig, StepMetrics,
    TeacherWeights, Trainer,
};
use toy::*;

/// `steps` steps of `objective` from the copy base with `output_head`; the metrics of every
/// step and the weights at the end.
fn train(
    objective: &Objective,
    output_head: OutputHead,
    teacher: Option<&Llama<A>>,
    steps: usize,
) -> (Vec<StepMetrics>, Vec<Vec<f32>>) {
    let mut config = toy_config(objective.clone(), steps, 5e-3);
    config.output_head = output_head;
    // Adam with ε = 1e-8 moves every weight whose gradient passes ε by about the learning
    // rate, whatever its size: two correct ways of forming the gradient, equal to rounding
    // (10⁻⁷ of its largest entry), would move the weights with near-zero gradients apart by a
    // fair part of the learning rate. With ε = 1e-3 the update is Lipschitz in the gradient
    // (|Δ update| ≤ lr · |Δg| / ε), so the weights at the end compare the gradients.
    config.optimizer.epsilon = 1e-3;
    let student = copy_base();
    let tok = tokenizer();
    let mut builder =
        Trainer::builder(config, copy_base(), tok.clone(), mapping_tasks(), Revealing)
            .template(template());
    if let Some(teacher) = teacher {
        builder = builder.teacher(External::new(teacher.valid(), &tok, &student, &tok).unwrap());
    }
    let mut trainer = builder.build().unwrap();
    let mut all = Vec::new();
    trainer.train(|m| all.push(m.clone())).unwrap();
    (all, weights(trainer.student()))
}

fn assert_near(what: &str, fused: Option<f64>, formed: Option<f64>) {
    match (fused, formed) {
        (Some(a), Some(b)) => assert!(
            (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
            "{what}: fused {a} vs formed {b}"
        ),
        (a, b) => assert_eq!(
            a.is_some(),
            b.is_some(),
            "{what}: fused {a:?} vs formed {b:?}"
        ),
    }
}

fn fused_and_formed_train_alike(name: &str, objective: Objective, teacher: Option<&Llama<A>>) {
    let (fused, w_fused) = train(&objective, OutputHead::Fused, teacher, 4);
    let (formed, w_formed) = train(&objective, OutputHead::Formed, teacher, 4);
    assert_eq!(fused.len(), formed.len());
    for (a, b) in fused.iter().zip(&formed) {
        let what = |metric: &str| format!("{name} step {} {metric}", a.step);
        assert_near(&what("loss"), Some(a.loss), Some(b.loss));
        assert_near(&what("divergence"), a.divergence_mean, b.divergence_mean);
        assert_near(&what("entropy"), Some(a.entropy), Some(b.entropy));
        assert_near(
            &what("teacher entropy"),
            a.teacher_entropy,
            b.teacher_entropy,
        );
        assert_near(&what("top-k overlap"), a.topk_overlap, b.topk_overlap);
        assert_near(&what("ratio mean"), a.ratio_mean, b.ratio_mean);
    }
    let moved = w_fused
        .iter()
        .zip(&w_formed)
        .flat_map(|(a, b)| a.iter().zip(b))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved < 1e-6, "{name}: the weights differ by up to {moved}");
}

#[test]
fn opsd_fused_and_formed_train_alike() {
    fused_and_formed_train_alike("opsd", Objective::Opsd(OpsdConfig::default()), None);
}

#[test]
fn sdpo_fused_and_formed_train_alike() {
    let sdpo = SdpoConfig {
        group_size: 4,
        top_k: Some(5),
        teacher: TeacherWeights::TrustRegion(0.05),
        ..SdpoConfig::default()
    };
    fused_and_formed_train_alike("sdpo", Objective::Sdpo(sdpo), None);
}

#[test]
fn opd_divergence_form_fused_and_formed_train_alike() {
    let teacher = trainable(&copy_base().valid());
    let opd = OpdConfig {
        form: OpdForm::divergence(),
        ..OpdConfig::default()
    };
    fused_and_formed_train_alike("opd", Objective::Opd(opd), Some(&teacher));
}

#[test]
fn sft_fused_and_formed_train_alike() {
    fused_and_formed_train_alike("sft", Objective::Sft(SftConfig::default()), None);
}
