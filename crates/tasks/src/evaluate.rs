//! Accuracy of a model on held-out tasks.

use opd_policy::{ChatTokenizer, Message, Policy};
use opd_rollout::{SamplingParams, generate};

use crate::error::Result;
use crate::task::{Environment, Task};

/// The user turn of `prompt` through the chat template, with the generation prompt, as ids:
/// the context a student answers in, in training and in evaluation alike.
pub fn prompt_ids(tokenizer: &ChatTokenizer, prompt: &str) -> Result<Vec<u32>> {
    Ok(tokenizer.encode_chat(&[Message::user(prompt)], true)?)
}

/// What an evaluation measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Fraction of answers the environment marked correct (avg@n over `n` samples per task).
    pub accuracy: f64,
    /// Fraction of tasks with at least one correct answer among their `n` (pass@n).
    pub pass_at_n: f64,
    /// Mean reward.
    pub reward: f64,
    /// Answers graded.
    pub answers: usize,
}

/// Samples answers to every task with `params` (greedy: [`SamplingParams::greedy`]) and grades
/// them. Run it on the inner-backend model (`student.valid()`): no graph is recorded.
pub fn evaluate<B: burn::tensor::backend::Backend>(
    model: &impl Policy<B>,
    tokenizer: &ChatTokenizer,
    environment: &dyn Environment,
    tasks: &[Task],
    params: &SamplingParams,
) -> Result<Evaluation> {
    let prompts = tasks
        .iter()
        .map(|task| prompt_ids(tokenizer, &task.prompt))
        .collect::<Result<Vec<_>>>()?;
    let batch = generate(model, tokenizer, &prompts, params)?;
    let (mut correct, mut reward) = (0usize, 0.0);
    let mut solved = vec![false; tasks.len()];
    for sample in &batch.samples {
        let outcome = environment.evaluate(&tasks[sample.prompt_index], &sample.text);
        correct += usize::from(outcome.correct);
        solved[sample.prompt_index] |= outcome.correct;
        reward += outcome.reward;
    }
    let answers = batch.samples.len().max(1);
    Ok(Evaluation {
        accuracy: correct as f64 / answers as f64,
        pass_at_n: solved.iter().filter(|&&s| s).count() as f64 / tasks.len().max(1) as f64,
        reward: reward / answers as f64,
        answers: batch.samples.len(),
    })
}
