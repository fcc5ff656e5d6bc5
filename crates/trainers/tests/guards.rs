//! Bad configs, bad tasks and non-finite losses: clear errors naming the field, the task or
//! the step, never a panic or a silently wrong update.

#[path = "support/toy.rs"]
mod toy;

use opd_tasks::{Environment, Outcome, Task};
use opd_trainers::{
    GrpoConfig, Objective, OnNonFinite, OpdConfig, OpdForm, OpsdConfig, SamplingConfig,
    TrainConfig, TrainError, Trainer,
};
use toy::*;

fn field_of(config: TrainConfig) -> &'static str {
    match config.validate() {
        Err(TrainError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn invalid_configs_name_their_field() {
    let grpo = |c: GrpoConfig| TrainConfig {
        objective: Objective::Grpo(c),
        ..TrainConfig::default()
    };
    assert_eq!(
        field_of(grpo(GrpoConfig {
            group_size: 1,
            ..GrpoConfig::default()
        })),
        "objective.group_size"
    );
    let mut nan_lr = TrainConfig::default();
    nan_lr.optimizer.learning_rate = f64::NAN;
    assert_eq!(field_of(nan_lr), "optimizer.learning_rate");
    let sampled_with_top_p = TrainConfig {
        objective: Objective::Opd(OpdConfig {
            form: OpdForm::advantage(),
            ..OpdConfig::default()
        }),
        sampling: SamplingConfig {
            top_p: 0.9,
            ..SamplingConfig::default()
        },
        ..TrainConfig::default()
    };
    assert_eq!(field_of(sampled_with_top_p), "sampling.top_p");
    let bad_beta = TrainConfig {
        objective: Objective::Opsd(OpsdConfig {
            divergence: opd_divergences::Divergence::Jsd { beta: 1.5 },
            ..OpsdConfig::default()
        }),
        ..TrainConfig::default()
    };
    assert_eq!(field_of(bad_beta), "objective.divergence");
    // The sampled-token form estimates the reverse KL alone: another divergence is refused.
    let sampled_jsd = TrainConfig {
        objective: Objective::Opsd(OpsdConfig {
            form: opd_trainers::DistillForm::SampledToken,
            ..OpsdConfig::default()
        }),
        ..TrainConfig::default()
    };
    assert_eq!(field_of(sampled_jsd), "objective.divergence");
    let err = TrainConfig {
        mini_batches: 0,
        ..TrainConfig::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "config field `mini_batches` = 0: expected at least 1"
    );
}

#[test]
fn config_files_refuse_unknown_keys_and_fill_defaults() {
    let parsed: TrainConfig =
        serde_json::from_str(r#"{"steps": 3, "objective": {"method": "sdpo", "group_size": 4}}"#)
            .unwrap();
    assert_eq!(parsed.steps, 3);
    assert_eq!(parsed.objective.group_size(), 4);
    let err = serde_json::from_str::<TrainConfig>(r#"{"step": 3}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `step`"), "{err}");
    let err =
        serde_json::from_str::<TrainConfig>(r#"{"objective": {"method": "grpo", "epsilon": 0.2}}"#)
            .unwrap_err();
    assert!(err.to_string().contains("unknown field `epsilon`"), "{err}");
}

#[test]
fn a_task_without_what_the_objective_needs_is_named() {
    let mut tasks = mapping_tasks();
    tasks[3].reference = None;
    let config = toy_config(Objective::Opsd(OpsdConfig::default()), 1, 1e-3);
    let student = Llama::<A>::init(&config_model(), 1, &Default::default());
    match Trainer::new(config, student, tokenizer(), tasks, Revealing) {
        Err(TrainError::Task { index: 3, .. }) => {}
        Err(other) => panic!("expected task 3 to be named, got {other}"),
        Ok(_) => panic!("expected task 3 to be named"),
    }
}

#[test]
fn opd_without_a_teacher_says_so() {
    let config = toy_config(Objective::Opd(OpdConfig::default()), 1, 1e-3);
    let student = Llama::<A>::init(&config_model(), 1, &Default::default());
    // A trainer that cannot run cannot be built.
    let err = match Trainer::new(config, student, tokenizer(), mapping_tasks(), Revealing) {
        Err(err) => err,
        Ok(_) => panic!("OPD without a teacher was built"),
    };
    assert!(
        matches!(
            err,
            TrainError::Config {
                field: "teacher",
                ..
            }
        ),
        "{err}"
    );
}

/// Rewards NaN: GRPO's advantages, and so its loss, are NaN.
struct Broken;

impl Environment for Broken {
    fn evaluate(&self, _: &Task, _: &str) -> Outcome {
        Outcome {
            reward: f64::NAN,
            correct: false,
            feedback: None,
        }
    }
}

fn weights(model: &Llama<A>) -> Vec<f32> {
    model
        .embed_tokens
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
}

#[test]
fn a_nan_loss_skips_the_update_or_stops_the_run() {
    let grpo = Objective::Grpo(GrpoConfig {
        group_size: 2,
        ..GrpoConfig::default()
    });
    let student = Llama::<A>::init(&config_model(), 1, &Default::default());
    let before = weights(&student);
    let config = toy_config(grpo.clone(), 2, 1e-2);
    let mut trainer = Trainer::new(
        config.clone(),
        student.clone(),
        tokenizer(),
        mapping_tasks(),
        Broken,
    )
    .unwrap();
    let metrics = trainer.step().unwrap();
    assert_eq!(metrics.skipped_updates, 1);
    assert!(
        metrics.warnings[0].contains("step 0"),
        "{:?}",
        metrics.warnings
    );
    assert_eq!(
        weights(trainer.student()),
        before,
        "the update was not applied"
    );
    let stop = TrainConfig {
        on_non_finite: OnNonFinite::Stop,
        ..config
    };
    let mut trainer = Trainer::new(stop, student, tokenizer(), mapping_tasks(), Broken).unwrap();
    match trainer.step() {
        Err(TrainError::NonFinite {
            step: 0,
            what: "loss",
            ..
        }) => {}
        other => panic!("expected a non-finite loss at step 0, got {other:?}"),
    }
}

fn config_model() -> opd_policy::LlamaConfig {
    toy::config()
}

use opd_policy::Llama;

#[test]
fn the_collapse_watch_warns_or_stops() {
    let grpo = opd_trainers::GrpoConfig {
        group_size: 2,
        ..Default::default()
    };
    let mut config = toy_config(Objective::Grpo(grpo), 2, 1e-3);
    // An entropy floor no model reaches: the watch fires at the first step.
    config.collapse.min_entropy = Some(100.0);
    let student = Llama::<A>::init(&config_model(), 1, &Default::default());
    let mut trainer = Trainer::new(
        config.clone(),
        student.clone(),
        tokenizer(),
        mapping_tasks(),
        Revealing,
    )
    .unwrap();
    let metrics = trainer.step().unwrap();
    assert!(
        metrics
            .warnings
            .iter()
            .any(|w| w.contains("collapse.min_entropy")),
        "{:?}",
        metrics.warnings
    );
    config.collapse.stop = true;
    let mut trainer =
        Trainer::new(config, student, tokenizer(), mapping_tasks(), Revealing).unwrap();
    match trainer.step() {
        Err(TrainError::Collapse { step: 0, reason }) => assert!(reason.contains("entropy")),
        other => panic!("expected the run to stop at step 0, got {other:?}"),
    }
}

#[test]
fn each_opd_form_reads_only_its_own_settings() {
    let parse = |json: &str| serde_json::from_str::<Objective>(json);
    let jsd = Objective::Opd(OpdConfig {
        form: OpdForm::Divergence {
            divergence: opd_divergences::Divergence::Jsd { beta: 0.5 },
            teacher_top_k: None,
        },
        ..OpdConfig::default()
    });
    let divergence =
        parse(r#"{"method": "opd", "form": "divergence", "divergence": {"jsd": 0.5}}"#).unwrap();
    assert_eq!(divergence, jsd);
    // Older run files' `divergence_beta` reads as the same divergence; both at once is an error.
    let older = r#"{"method": "opd", "form": "divergence", "divergence_beta": 0.5}"#;
    assert_eq!(parse(older).unwrap(), jsd);
    let both = r#"{"method": "opd", "form": "divergence", "divergence_beta": 0.5,
                   "divergence": "reverse_kl"}"#;
    assert!(
        parse(both)
            .unwrap_err()
            .to_string()
            .contains("divergence_beta")
    );
    // The JSD's weight is checked when read; its endpoints read as the two KLs.
    let outside = r#"{"method": "opd", "form": "divergence", "divergence": {"jsd": 1.5}}"#;
    assert!(parse(outside).unwrap_err().to_string().contains("beta"));
    let endpoint = r#"{"method": "opd", "form": "divergence", "divergence": {"jsd": 0.0}}"#;
    assert_eq!(
        parse(endpoint).unwrap(),
        Objective::Opd(OpdConfig {
            form: OpdForm::Divergence {
                divergence: opd_divergences::Divergence::ForwardKl,
                teacher_top_k: None,
            },
            ..OpdConfig::default()
        })
    );
    // A setting of another form would be silently ignored: it is refused, naming both.
    let err = parse(r#"{"method": "opd", "form": "surrogate", "discount": 0.5}"#).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("`discount`") && message.contains("advantage"),
        "{message}"
    );
    // That form's default changes nothing and is accepted, as older run files wrote it.
    parse(r#"{"method": "opd", "form": "surrogate", "discount": 0.0, "divergence_beta": 1.0}"#)
        .unwrap();
    // Every form survives a round trip through its run-file spelling.
    for form in [
        OpdForm::surrogate(),
        OpdForm::advantage(),
        OpdForm::divergence(),
    ] {
        let objective = Objective::Opd(OpdConfig {
            form,
            ..OpdConfig::default()
        });
        let json = serde_json::to_string(&objective).unwrap();
        assert_eq!(parse(&json).unwrap(), objective, "{json}");
    }
}

#[test]
fn a_teacher_for_a_method_without_one_is_refused() {
    let config = toy_config(Objective::Grpo(GrpoConfig::default()), 1, 1e-3);
    let student = Llama::<A>::init(&config_model(), 1, &Default::default());
    let teacher = opd_teachers::FrozenInitial::new(&student);
    let built = Trainer::builder(config, student, tokenizer(), mapping_tasks(), Revealing)
        .teacher(teacher)
        .build();
    assert!(
        matches!(
            built,
            Err(TrainError::Config {
                field: "teacher",
                ..
            })
        ),
        "GRPO was built with a teacher"
    );
}

#[test]
fn every_trust_region_estimator_and_baseline_trains_a_step() {
    use burn::module::AutodiffModule;
    use opd_trainers::{SampledTokenBaseline, TrustRegionEstimator};
    let tok = tokenizer();
    for estimator in [
        TrustRegionEstimator::K1,
        TrustRegionEstimator::K2,
        TrustRegionEstimator::K3,
        TrustRegionEstimator::Exact,
    ] {
        let student = Llama::<A>::init(&config_model(), 1, &Default::default());
        let teacher = Llama::<A>::init(&config_model(), 2, &Default::default());
        let external = opd_teachers::External::new(teacher.valid(), &tok, &student, &tok).unwrap();
        let objective = Objective::Opd(OpdConfig {
            form: OpdForm::Surrogate {
                trust_region_beta: 0.5,
                estimator,
            },
            ..OpdConfig::default()
        });
        let mut run = toy_config(objective, 1, 1e-3);
        // The trust region acts from the second mini-batch on.
        run.mini_batches = 2;
        let mut trainer = Trainer::builder(run, student, tok.clone(), mapping_tasks(), Revealing)
            .teacher(external)
            .build()
            .unwrap();
        let m = trainer.step().unwrap();
        assert!(
            m.loss.is_finite() && m.skipped_updates == 0,
            "{estimator:?}: {m:?}"
        );
    }
    let mut opsd = OpsdConfig {
        form: opd_trainers::DistillForm::SampledToken,
        divergence: opd_divergences::Divergence::ReverseKl,
        baseline: SampledTokenBaseline::Old,
        ..OpsdConfig::default()
    };
    let student = Llama::<A>::init(&config_model(), 1, &Default::default());
    let run = toy_config(Objective::Opsd(opsd.clone()), 1, 1e-3);
    let mut trainer = Trainer::builder(run, student, tok.clone(), mapping_tasks(), Revealing)
        .template(template())
        .build()
        .unwrap();
    assert!(trainer.step().unwrap().loss.is_finite());
    // π_old is known at temperature 1 only.
    opsd.temperature = 0.7;
    let run = toy_config(Objective::Opsd(opsd), 1, 1e-3);
    assert_eq!(field_of(run), "objective.baseline");
}
