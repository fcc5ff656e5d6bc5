//! Every trainer shown to learn on fixed seeds, tiny models on the CPU, with stated margins.

#[path = "support/toy.rs"]
mod toy;

use std::time::Instant;

use opd_tasks::Task;
use opd_trainers::{Objective, SftConfig, Trainer};
use toy::*;

#[test]
fn sft_lowers_held_out_nll() {
    // Copying an answer shown in the prompt: 80 pairs to train on, 20 held out.
    let pairs: Vec<Task> = (0..100)
        .map(|i| Task::with_answer(format!("{}|{}", i / 10, i % 10), (i % 10).to_string()))
        .collect();
    let (train, held_out): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .enumerate()
        .partition(|(i, _)| (i / 10 + i) % 5 != 0);
    let train: Vec<Task> = train.into_iter().map(|(_, t)| t).collect();
    let held_out: Vec<Task> = held_out.into_iter().map(|(_, t)| t).collect();
    let student = Llama::<A>::init(&config(), 3, &Default::default());
    let before = nll(&student, &held_out);
    let mut cfg = toy_config(Objective::Sft(SftConfig::default()), 60, 1e-2);
    cfg.prompts_per_step = 16;
    let clock = Instant::now();
    let mut trainer = Trainer::new(cfg, student, tokenizer(), train, Revealing).unwrap();
    let mut losses = Vec::new();
    trainer.train(|m| losses.push(m.loss)).unwrap();
    let after = nll(trainer.student(), &held_out);
    println!(
        "SFT held-out NLL {before:.3} -> {after:.3} in {:?}",
        clock.elapsed()
    );
    assert!(
        after < 0.5 * before,
        "held-out NLL {before:.3} -> {after:.3}"
    );
}

/// Runs `trainer` to the end; returns the metrics of every step.
fn run(mut trainer: Trainer<A>, name: &str) -> (Llama<A>, Vec<StepMetrics>) {
    let clock = Instant::now();
    let mut all = Vec::new();
    trainer
        .train(|m| {
            if m.step % 25 == 0 {
                println!(
                    "{name} step {:>3}: loss {:+.4} div {:?} reward {:.3} entropy {:.3} overlap {:?} mass {:?} ratio {:?} {:?} {:?} gn {:.3} len {:.2}",
                    m.step, m.loss, m.divergence_mean, m.reward_mean, m.entropy, m.topk_overlap,
                    m.shared_mass_teacher, m.ratio_min, m.ratio_mean, m.ratio_max, m.grad_norm, m.response_length_mean
                );
            }
            all.push(m.clone());
        })
        .unwrap();
    println!("{name}: {} steps in {:?}", all.len(), clock.elapsed());
    (trainer.into_student(), all)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean of a metric over the first and the last `n` steps.
fn first_last(all: &[StepMetrics], n: usize, f: impl Fn(&StepMetrics) -> f64) -> (f64, f64) {
    (
        mean(all[..n].iter().map(&f)),
        mean(all[all.len() - n..].iter().map(&f)),
    )
}

#[test]
fn copy_base_knows_nothing_of_the_mapping() {
    let acc = accuracy(&copy_base(), 8, 1);
    assert!(acc < 0.25, "the base starts near chance (0.1): {acc:.3}");
}

#[test]
fn grpo_raises_the_reward() {
    let student = copy_base();
    let before = accuracy(&student, 8, 1);
    let objective = Objective::Grpo(GrpoConfig {
        group_size: 8,
        ..GrpoConfig::default()
    });
    let trainer = Trainer::new(
        toy_config(objective, 40, 2e-3),
        student,
        tokenizer(),
        mapping_tasks(),
        Revealing,
    )
    .unwrap();
    let (student, all) = run(trainer, "grpo");
    let after = accuracy(&student, 8, 1);
    let (r0, r1) = first_last(&all, 5, |m| m.reward_mean);
    println!("grpo: accuracy {before:.3} -> {after:.3}, reward {r0:.3} -> {r1:.3}");
    assert!(all.iter().all(|m| m.frac_reward_zero_std.is_some()));
    assert!(after >= before + 0.4, "accuracy {before:.3} -> {after:.3}");
    assert!(r1 >= r0 + 0.3, "reward {r0:.3} -> {r1:.3}");
}

/// OPD from the mapping teacher for `steps` steps, once per rollout seed of `seeds`; asserts
/// the exact reverse KL at the answer falls to `kl_ratio` of its start and accuracy rises by
/// `gain` (or reaches the teacher's), both as the mean over the seeds: the sampled-token forms
/// see one token per position, and a single run's end point moves with every sampled token.
fn opd(form: OpdForm, steps: usize, seeds: &[u64], kl_ratio: f64, gain: f64) {
    let teacher = mapping_teacher();
    let teacher_accuracy = accuracy(&teacher, 8, 2);
    let student = copy_base();
    let before = accuracy(&student, 8, 2);
    let kl_before = answer_reverse_kl(&student, &teacher, &mapping_tasks());
    let tok = tokenizer();
    let (mut kl_after, mut after) = (Vec::new(), Vec::new());
    for &seed in seeds {
        let external = External::new(teacher.valid(), &tok, &student, &tok).unwrap();
        let objective = Objective::Opd(OpdConfig {
            form,
            ..OpdConfig::default()
        });
        let mut config = toy_config(objective, steps, 2e-3);
        config.mini_batches = 2;
        config.seed = seed;
        // One answer per prompt: each step draws the ten questions four times.
        config.prompts_per_step = 40;
        let trainer =
            Trainer::builder(config, copy_base(), tok.clone(), mapping_tasks(), Revealing)
                .teacher(external)
                .build()
                .unwrap();
        let (trained, _) = run(trainer, "opd");
        after.push(accuracy(&trained, 8, 2));
        kl_after.push(answer_reverse_kl(&trained, &teacher, &mapping_tasks()));
    }
    let (after, kl_after) = (mean(after.iter().copied()), mean(kl_after.iter().copied()));
    println!(
        "opd {form:?} over seeds {seeds:?}: accuracy {before:.3} -> {after:.3} (teacher \
         {teacher_accuracy:.3}), reverse KL at the answer {kl_before:.3} -> {kl_after:.3}"
    );
    assert!(
        teacher_accuracy > 0.9,
        "the teacher knows the mapping: {teacher_accuracy:.3}"
    );
    assert!(
        kl_after < kl_ratio * kl_before,
        "reverse KL {kl_before:.3} -> {kl_after:.3}"
    );
    assert!(
        after >= (before + gain).min(teacher_accuracy - 0.15),
        "accuracy {before:.3} -> {after:.3} (teacher {teacher_accuracy:.3})"
    );
}

#[test]
fn opd_divergence_form_reaches_the_teacher() {
    opd(OpdForm::divergence(), 40, &[7], 0.05, 1.0);
}

// The sampled-token forms see one token per position: slower than the full divergence, and
// where a 150-step run ends moves with every sampled token and with the teacher (two SFT
// teachers that differ only by float rounding in training give 5-seed means of 0.66 and 0.55
// of the starting KL for the surrogate, 0.53 and 0.29 for the advantage form). The bars are
// means over five seeds, set below the worse of those teachers.
#[test]
fn opd_surrogate_lowers_the_reverse_kl_and_raises_accuracy() {
    opd(OpdForm::surrogate(), 150, &[7, 8, 9, 10, 11], 0.75, 0.25);
}

#[test]
fn opd_advantage_form_lowers_the_reverse_kl_and_raises_accuracy() {
    opd(OpdForm::advantage(), 150, &[7, 8, 9, 10, 11], 0.65, 0.3);
}

/// What a self-distillation run measured.
struct Distilled {
    student: Llama<A>,
    before: f64,
    after: f64,
    /// Mean divergence over the first and the last three steps.
    d0: f64,
    d1: f64,
    all: Vec<StepMetrics>,
}

/// A self-distillation run of `student` on the mapping task.
fn self_distill(
    student: Llama<A>,
    objective: Objective,
    steps: usize,
    lr: f64,
    name: &str,
) -> Distilled {
    let before = accuracy(&student, 8, 3);
    let trainer = Trainer::builder(
        toy_config(objective, steps, lr),
        student,
        tokenizer(),
        mapping_tasks(),
        Revealing,
    )
    .template(template())
    .build()
    .unwrap();
    let (student, all) = run(trainer, name);
    let after = accuracy(&student, 8, 3);
    let (d0, d1) = first_last(&all, 3, |m| m.divergence_mean.unwrap());
    println!("{name}: accuracy {before:.3} -> {after:.3}, divergence {d0:.3} -> {d1:.3}");
    Distilled {
        student,
        before,
        after,
        d0,
        d1,
        all,
    }
}

#[test]
fn opsd_lowers_its_jsd_and_raises_accuracy() {
    let Distilled {
        before,
        after,
        d0,
        d1,
        all,
        ..
    } = self_distill(
        copy_base(),
        Objective::Opsd(OpsdConfig::default()),
        30,
        5e-3,
        "opsd",
    );
    assert!(after >= before + 0.5, "accuracy {before:.3} -> {after:.3}");
    assert!(d1 < 0.5 * d0, "JSD {d0:.3} -> {d1:.3}");
    let last = all.last().unwrap();
    assert!(last.topk_overlap.is_some() && last.teacher_entropy.is_some());
}

/// With LoRA only the adapters train, against the adapters-off teacher; the same holds, with
/// the same margins, when the frozen bases are kept in bf16 (`with_frozen_precision`).
#[test]
fn opsd_with_lora_trains_only_the_adapters_against_the_adapters_off_teacher() {
    for precision in [FrozenPrecision::F32, FrozenPrecision::Bf16] {
        let base = copy_base();
        let embedding = |m: &Llama<A>| m.embed_tokens.weight.val().into_data();
        let frozen = embedding(&base);
        let lora = LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: LoraTarget::ALL.to_vec(),
            seed: 0,
        };
        let Distilled {
            student,
            before,
            after,
            d0,
            d1,
            ..
        } = self_distill(
            base.with_lora(&lora).with_frozen_precision(precision),
            Objective::Opsd(OpsdConfig::default()),
            30,
            1e-2,
            "opsd-lora",
        );
        let what = precision.name();
        assert_eq!(
            embedding(&student),
            frozen,
            "{what}: the base weights never move"
        );
        assert!(
            after >= before + 0.5,
            "{what}: accuracy {before:.3} -> {after:.3}"
        );
        assert!(d1 < 0.5 * d0, "{what}: JSD {d0:.3} -> {d1:.3}");
        eprintln!("{what}: accuracy {before:.3} -> {after:.3}, JSD {d0:.3} -> {d1:.3}");
    }
}

#[test]
fn sdft_lowers_its_reverse_kl_and_raises_accuracy() {
    let Distilled {
        before,
        after,
        d0,
        d1,
        ..
    } = self_distill(
        copy_base(),
        Objective::Sdft(SdftConfig {
            teacher: TeacherWeights::FrozenInitial,
            ..SdftConfig::default()
        }),
        40,
        2e-3,
        "sdft",
    );
    assert!(after >= before + 0.5, "accuracy {before:.3} -> {after:.3}");
    assert!(d1 < 0.5 * d0, "reverse KL {d0:.3} -> {d1:.3}");
}

#[test]
fn sdpo_raises_the_reward_from_feedback() {
    let objective = Objective::Sdpo(SdpoConfig {
        group_size: 4,
        teacher: TeacherWeights::TrustRegion(0.05),
        ..SdpoConfig::default()
    });
    let Distilled {
        before, after, all, ..
    } = self_distill(copy_base(), objective, 40, 2e-3, "sdpo");
    let (r0, r1) = first_last(&all, 5, |m| m.reward_mean);
    assert!(after >= before + 0.5, "accuracy {before:.3} -> {after:.3}");
    assert!(r1 >= r0 + 0.3, "reward {r0:.3} -> {r1:.3}");
}

use burn::module::AutodiffModule;
use opd_policy::{FrozenPrecision, Llama, LoraConfig, LoraTarget};
use opd_teachers::External;
use opd_trainers::{
    GrpoConfig, OpdConfig, OpdForm, OpsdConfig, SdftConfig, SdpoConfig, StepMetrics, TeacherWeights,
};
