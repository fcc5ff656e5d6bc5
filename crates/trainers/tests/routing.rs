//! Several OPD teachers in one run: each task is scored by the teacher its `teacher` field
//! names, the scores of a micro-batch that mixes teachers are put back row for row, and the
//! metrics say each teacher's divergence and overlap.

#[path = "support/toy.rs"]
mod toy;

use burn::module::AutodiffModule;
use opd_policy::Llama;
use opd_teachers::External;
use opd_trainers::{Objective, OpdConfig, OpdForm, OutputHead, TrainError, Trainer};
use toy::*;

/// The mapping tasks, alternately routed to `same` (the student itself) and `other` (a model
/// of other weights).
fn routed() -> Vec<opd_tasks::Task> {
    mapping_tasks()
        .into_iter()
        .enumerate()
        .map(|(i, mut task)| {
            task.teacher = Some(if i % 2 == 0 { "same" } else { "other" }.into());
            task
        })
        .collect()
}

fn first_step(form: OpdForm, output_head: OutputHead) -> opd_trainers::StepMetrics {
    let student = Llama::<A>::init(&config(), 11, &Default::default());
    let other = Llama::<A>::init(&config(), 12, &Default::default());
    let tok = tokenizer();
    let same = External::new(student.valid(), &tok, &student, &tok).unwrap();
    let other = External::new(other.valid(), &tok, &student, &tok).unwrap();
    let objective = Objective::Opd(OpdConfig {
        form,
        ..OpdConfig::default()
    });
    let mut run = toy_config(objective, 1, 1e-3);
    // One micro-batch holding rows of both teachers.
    run.micro_batch = 16;
    run.output_head = output_head;
    let mut trainer = Trainer::builder(run, student, tok, routed(), Revealing)
        .named_teacher("same", Box::new(same))
        .named_teacher("other", Box::new(other))
        .build()
        .unwrap();
    trainer.step().unwrap()
}

#[test]
fn each_task_is_scored_by_its_teacher_and_measured_apart() {
    for form in [
        OpdForm::divergence(),
        OpdForm::Divergence {
            divergence: opd_divergences::Divergence::ReverseKl,
            teacher_top_k: Some(4),
        },
        OpdForm::surrogate(),
    ] {
        let metrics = first_step(form, OutputHead::Formed);
        // The head fused with the loss measures each teacher's rows alike.
        let fused = first_step(form, OutputHead::Fused);
        for name in ["same", "other"] {
            let (a, b) = (&fused.teachers[name], &metrics.teachers[name]);
            assert_eq!(a.tokens, b.tokens, "{form:?} {name}");
            for (what, x, y) in [
                ("divergence", a.divergence_mean, b.divergence_mean),
                ("overlap", a.topk_overlap, b.topk_overlap),
            ] {
                let (x, y) = (x.unwrap_or(0.0), y.unwrap_or(0.0));
                assert!(
                    (x - y).abs() < 1e-4,
                    "{form:?} {name} {what}: fused {x} formed {y}"
                );
            }
        }
        let (same, other) = (&metrics.teachers["same"], &metrics.teachers["other"]);
        assert!(same.tokens > 0 && other.tokens > 0, "{form:?}: {metrics:?}");
        let (d_same, d_other) = (
            same.divergence_mean.unwrap(),
            other.divergence_mean.unwrap(),
        );
        // The student is its own teacher on `same`'s rows (before the first update).
        assert!(
            d_same.abs() < 1e-4,
            "{form:?}: {d_same} on the student's own rows"
        );
        assert!(
            d_other > 100.0 * d_same.abs().max(1e-6),
            "{form:?}: {d_other}"
        );
        if form == OpdForm::divergence() {
            assert!(same.topk_overlap.unwrap() > 0.99, "{form:?}: {same:?}");
            assert!(other.topk_overlap.unwrap() < same.topk_overlap.unwrap());
        }
    }
}

#[test]
fn a_task_routed_to_a_teacher_the_run_lacks_is_named() {
    let student = Llama::<A>::init(&config(), 11, &Default::default());
    let tok = tokenizer();
    let same = External::new(student.valid(), &tok, &student, &tok).unwrap();
    let mut tasks = routed();
    tasks[3].teacher = Some("absent".into());
    let run = toy_config(Objective::Opd(OpdConfig::default()), 1, 1e-3);
    let built = Trainer::builder(run.clone(), student.clone(), tok.clone(), tasks, Revealing)
        .named_teacher("same", Box::new(same.clone()))
        .named_teacher("other", Box::new(same.clone()))
        .build();
    match built {
        Err(TrainError::Task { index: 1, problem })
        | Err(TrainError::Task { index: 3, problem }) => {
            assert!(
                problem.contains("absent") || problem.contains("other"),
                "{problem}"
            )
        }
        Err(other) => panic!("expected a task error, got {other}"),
        Ok(_) => panic!("a task routed to no teacher was accepted"),
    }
    // A routed task in a run without teacher models is refused too.
    let sft = toy_config(Objective::Sft(Default::default()), 1, 1e-3);
    match Trainer::builder(sft, student, tok, routed(), Revealing).build() {
        Err(TrainError::Task { index: 0, problem }) => {
            assert!(problem.contains("same"), "{problem}")
        }
        Err(other) => panic!("expected a task error, got {other}"),
        Ok(_) => panic!("SFT accepted tasks routed to teachers"),
    }
}

#[test]
fn two_teachers_routed_by_task_each_lower_their_tasks_divergence() {
    let student = Llama::<A>::init(&config(), 11, &Default::default());
    let tok = tokenizer();
    let models = [12, 13].map(|seed| Llama::<A>::init(&config(), seed, &Default::default()));
    let mut tasks = routed();
    for (i, task) in tasks.iter_mut().enumerate() {
        task.teacher = Some(if i % 2 == 0 { "a" } else { "b" }.into());
    }
    let of = |name: &str| -> Vec<opd_tasks::Task> {
        tasks
            .iter()
            .filter(|t| t.teacher.as_deref() == Some(name))
            .cloned()
            .collect()
    };
    let before = [
        answer_reverse_kl(&student, &models[0], &of("a")),
        answer_reverse_kl(&student, &models[1], &of("b")),
    ];
    let objective = Objective::Opd(OpdConfig {
        form: OpdForm::divergence(),
        ..OpdConfig::default()
    });
    let mut run = toy_config(objective, 40, 1e-2);
    run.prompts_per_step = 20;
    let teacher = |m: &Llama<A>| Box::new(External::new(m.valid(), &tok, &student, &tok).unwrap());
    let mut trainer = Trainer::builder(run, student.clone(), tok.clone(), tasks.clone(), Revealing)
        .named_teacher("a", teacher(&models[0]))
        .named_teacher("b", teacher(&models[1]))
        .build()
        .unwrap();
    let mut tokens = [0, 0];
    trainer
        .train(|m| {
            tokens[0] += m.teachers["a"].tokens;
            tokens[1] += m.teachers["b"].tokens;
        })
        .unwrap();
    let trained = trainer.into_student();
    let after = [
        answer_reverse_kl(&trained, &models[0], &of("a")),
        answer_reverse_kl(&trained, &models[1], &of("b")),
    ];
    println!(
        "reverse KL at the answer, teacher a: {:.4} -> {:.4}, b: {:.4} -> {:.4}",
        before[0], after[0], before[1], after[1]
    );
    for t in 0..2 {
        assert!(tokens[t] > 0);
        assert!(
            after[t] < 0.5 * before[t],
            "teacher {t}: {:.4} -> {:.4}",
            before[t],
            after[t]
        );
    }
}
