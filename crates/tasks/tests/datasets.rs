//! The committed datasets: they parse, their splits are disjoint, and their references pass
//! the environments that grade them.

use opd_tasks::data::read_jsonl;
use opd_tasks::{Environment, MathAnswer, RustTests};

fn committed(path: &str) -> Vec<opd_tasks::Task> {
    let path = format!("{}/../../data/{path}", env!("CARGO_MANIFEST_DIR"));
    read_jsonl(&path).expect("the committed tasks")
}

#[test]
fn gsm_references_end_in_their_answer_and_the_splits_are_disjoint() {
    let (train, test) = (committed("gsm/train.jsonl"), committed("gsm/test.jsonl"));
    assert_eq!((train.len(), test.len()), (2500, 500));
    let mut prompts: Vec<&str> = train
        .iter()
        .chain(&test)
        .map(|t| t.prompt.as_str())
        .collect();
    prompts.sort_unstable();
    prompts.dedup();
    assert_eq!(prompts.len(), 3000, "no question twice");
    let env = MathAnswer::default();
    for (i, task) in train.iter().chain(&test).enumerate() {
        let reference = task.reference.as_deref().expect("a worked solution");
        let answer = task.answer.as_deref().expect("a final answer");
        assert!(reference.ends_with(&format!("#### {answer}")), "row {i}");
        assert!(env.evaluate(task, reference).correct, "row {i}");
    }
}

/// Every 12th committed task (the script keeps only tasks whose reference passes; this checks
/// that the environment agrees, at a fraction of the compile time).
#[test]
fn committed_humaneval_rust_references_pass() {
    let (train, test) = (
        committed("humaneval-rust/train.jsonl"),
        committed("humaneval-rust/test.jsonl"),
    );
    assert_eq!((train.len(), test.len()), (116, 30));
    let tasks: Vec<_> = train.into_iter().chain(test).collect();
    let env = RustTests::default();
    for (i, task) in tasks.iter().enumerate().step_by(12) {
        assert!(task.tests.is_some() && task.answer.is_none(), "task {i}");
        let reference = task.reference.as_deref().expect("a reference");
        let outcome = env.evaluate(task, reference);
        assert!(outcome.correct, "task {i}: {:?}", outcome.feedback);
    }
}
