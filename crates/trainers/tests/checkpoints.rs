//! A run saved and resumed takes the same steps as one that never stopped.

#[path = "support/toy.rs"]
mod toy;

use opd_policy::{Llama, LoraConfig, LoraTarget};
use opd_trainers::checkpoint::{
    checkpoint_dir, checkpoints, latest_checkpoint, prune_checkpoints, verify,
};
use opd_trainers::{
    GrpoConfig, Objective, SdftConfig, TeacherWeights, TrainConfig, TrainError, Trainer,
};
use toy::{
    A, Revealing, config, copy_base, mapping_tasks, template, tokenizer, toy_config, weights,
};

fn trainer(objective: &Objective, student: Llama<A>, steps: usize) -> Trainer<A> {
    let mut run: TrainConfig = toy_config(objective.clone(), steps, 1e-2);
    run.mini_batches = 2;
    Trainer::builder(run, student, tokenizer(), mapping_tasks(), Revealing)
        .template(template())
        .build()
        .unwrap()
}

/// Trains `steps` steps straight, and again with a checkpoint after `stop` steps resumed by a
/// freshly built trainer; the losses and final weights must be identical. The three trainers
/// start from clones of `student`, one after another on this thread.
fn resumes_exactly(objective: Objective, student: Llama<A>) {
    let steps = 5;
    let mut straight = trainer(&objective, student.clone(), steps);
    let mut expected = Vec::new();
    straight.train(|m| expected.push(m.loss)).unwrap();

    let run = tempfile::tempdir().unwrap();
    let stop = 2;
    let mut first = trainer(&objective, student.clone(), steps);
    let mut resumed_losses = Vec::new();
    for _ in 0..stop {
        resumed_losses.push(first.step().unwrap().loss);
    }
    first
        .save_checkpoint(checkpoint_dir(run.path(), stop))
        .unwrap();
    // One more step that the resumed run must not see.
    first.step().unwrap();
    drop(first);

    let mut second = trainer(&objective, student, steps);
    second
        .resume(latest_checkpoint(run.path()).unwrap())
        .unwrap();
    assert_eq!(second.steps_done(), stop);
    second.train(|m| resumed_losses.push(m.loss)).unwrap();
    assert_eq!(resumed_losses, expected, "{}", objective.name());
    assert!(
        expected.iter().all(|l| l.is_finite() && *l != 0.0),
        "{expected:?}"
    );
    assert!(
        weights(&second.into_student()) == weights(&straight.into_student()),
        "the final weights differ"
    );
}

#[test]
fn sdft_with_an_ema_teacher_resumes_exactly() {
    resumes_exactly(
        Objective::Sdft(SdftConfig {
            teacher: TeacherWeights::Ema(0.2),
            ..SdftConfig::default()
        }),
        Llama::<A>::init(&config(), 11, &Default::default()),
    );
}

#[test]
fn grpo_with_lora_resumes_exactly() {
    resumes_exactly(
        Objective::Grpo(GrpoConfig {
            group_size: 4,
            ..GrpoConfig::default()
        }),
        copy_base().with_lora(&LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: LoraTarget::ALL.to_vec(),
            seed: 0,
        }),
    );
}

#[test]
fn another_config_is_refused_and_old_checkpoints_are_pruned() {
    let objective = Objective::Sdft(SdftConfig::default());
    let run = tempfile::tempdir().unwrap();
    let student = Llama::<A>::init(&config(), 11, &Default::default());
    let mut trainer_a = trainer(&objective, student, 3);
    for step in 1..=3 {
        trainer_a.step().unwrap();
        trainer_a
            .save_checkpoint(checkpoint_dir(run.path(), step))
            .unwrap();
    }
    std::fs::create_dir(run.path().join("step-000009.tmp")).unwrap();
    prune_checkpoints(run.path(), 2).unwrap();
    let left: Vec<usize> = checkpoints(run.path())
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(left, vec![2, 3]);
    assert!(!run.path().join("step-000009.tmp").exists());

    let mut other = TrainConfig {
        seed: 8,
        ..toy_config(objective.clone(), 3, 1e-2)
    };
    other.mini_batches = 2;
    let student = Llama::<A>::init(&config(), 11, &Default::default());
    let mut trainer_b =
        Trainer::new(other, student, tokenizer(), mapping_tasks(), Revealing).unwrap();
    match trainer_b.resume(checkpoint_dir(run.path(), 3)) {
        Err(TrainError::Checkpoint { problem, .. }) => assert!(problem.contains("another config")),
        other => panic!("expected a checkpoint error, got {:?}", other.err()),
    }
}

#[test]
fn other_tasks_or_a_damaged_file_are_refused_and_tokens_spent_survive() {
    let objective = Objective::Sdft(SdftConfig::default());
    let run = tempfile::tempdir().unwrap();
    let student = Llama::<A>::init(&config(), 11, &Default::default());
    let mut saved = trainer(&objective, student.clone(), 3);
    saved.step().unwrap();
    saved.step().unwrap();
    let dir = checkpoint_dir(run.path(), 2);
    saved.save_checkpoint(&dir).unwrap();
    assert!(saved.tokens_spent().trained > 0);
    verify(&dir).unwrap();

    let mut resumed = trainer(&objective, student.clone(), 3);
    resumed.resume(&dir).unwrap();
    assert_eq!(resumed.tokens_spent(), saved.tokens_spent());

    let mut fewer = mapping_tasks();
    fewer.pop();
    let mut run_config = toy_config(objective.clone(), 3, 1e-2);
    run_config.mini_batches = 2;
    let mut other = Trainer::builder(run_config, student.clone(), tokenizer(), fewer, Revealing)
        .template(template())
        .build()
        .unwrap();
    match other.resume(&dir) {
        Err(TrainError::Checkpoint { problem, .. }) => {
            assert!(problem.contains("other tasks"), "{problem}")
        }
        other => panic!("expected a checkpoint error, got {:?}", other.err()),
    }

    // One flipped byte in the weights: named, before any is read.
    let weights = dir.join("trainable.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let mut fresh = trainer(&objective, student, 3);
    match fresh.resume(&dir) {
        Err(TrainError::Checkpoint { path, problem }) => {
            assert_eq!(path, weights);
            assert!(problem.contains("CRC-32"), "{problem}");
        }
        other => panic!("expected a checkpoint error, got {:?}", other.err()),
    }
}
