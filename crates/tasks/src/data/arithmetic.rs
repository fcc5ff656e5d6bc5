//! The built-in task: two-operand integer arithmetic, generated from a seed.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};
use crate::task::Task;

/// An arithmetic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `a+b`.
    Add,
    /// `a-b` with `a ≥ b`.
    Subtract,
    /// `a*b`.
    Multiply,
}

impl Operation {
    fn symbol(self) -> char {
        match self {
            Operation::Add => '+',
            Operation::Subtract => '-',
            Operation::Multiply => '*',
        }
    }

    fn apply(self, a: u64, b: u64) -> u64 {
        match self {
            Operation::Add => a + b,
            Operation::Subtract => a - b,
            Operation::Multiply => a * b,
        }
    }
}

/// Questions `a∘b` with operands in `0..=max_operand`, written without spaces (`37+45`); the
/// answer is the result (`82`), the reference solution its own template. The embedded default task: it needs no
/// files, and a model trained from scratch on characters learns it in minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Arithmetic {
    /// Largest operand.
    pub max_operand: u64,
    /// The operations questions are drawn from, uniformly.
    pub operations: Vec<Operation>,
    /// Seed of the draw.
    pub seed: u64,
    /// The prompt, `{question}` standing for `a∘b`: `"{question}"` for character models,
    /// `"What is {question}? Give the final answer after ####."` for chat models.
    pub template: String,
    /// The reference solution, `{question}` and `{answer}` standing for `a∘b` and its result:
    /// `"{answer}"` for character models, `"{question} = {answer}\n#### {answer}"` for chat
    /// models (what SFT imitates and what OPSD's teacher reads).
    pub reference: String,
}

impl Default for Arithmetic {
    fn default() -> Self {
        Self {
            max_operand: 49,
            operations: vec![Operation::Add],
            seed: 0,
            template: "{question}".into(),
            reference: "{answer}".into(),
        }
    }
}

impl Arithmetic {
    /// `train` and `test` distinct questions, disjoint: the same seed gives the same split.
    pub fn split(&self, train: usize, test: usize) -> Result<(Vec<Task>, Vec<Task>)> {
        let mut questions: Vec<(u64, Operation, u64)> = self
            .operations
            .iter()
            .flat_map(|&op| {
                let n = self.max_operand;
                (0..=n).flat_map(move |a| {
                    (0..=n)
                        .filter(move |&b| op != Operation::Subtract || a >= b)
                        .map(move |b| (a, op, b))
                })
            })
            .collect();
        questions.sort_unstable_by_key(|&(a, op, b)| (op as u8, a, b));
        questions.dedup();
        if self.operations.is_empty() || train + test > questions.len() || train == 0 {
            return Err(TaskError::Config {
                field: "data.arithmetic",
                value: format!(
                    "{train} train + {test} test questions, {} distinct",
                    questions.len()
                ),
                expected: "at least one operation, and train + test (train ≥ 1) no more than the distinct questions",
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        questions.shuffle(&mut rng);
        // Draw an operation first so that each is equally likely whatever its question count.
        let mut by_op: Vec<Vec<(u64, Operation, u64)>> = self
            .operations
            .iter()
            .map(|&op| questions.iter().copied().filter(|q| q.1 == op).collect())
            .collect();
        let mut drawn = Vec::with_capacity(train + test);
        while drawn.len() < train + test {
            let pool = &mut by_op[rng.random_range(0..self.operations.len())];
            if let Some(q) = pool.pop() {
                drawn.push(q);
            }
        }
        let tasks: Vec<Task> = drawn
            .into_iter()
            .map(|(a, op, b)| {
                let question = format!("{a}{}{b}", op.symbol());
                let answer = op.apply(a, b).to_string();
                let fill = |template: &str| {
                    template
                        .replace("{question}", &question)
                        .replace("{answer}", &answer)
                };
                Task {
                    prompt: fill(&self.template),
                    reference: Some(fill(&self.reference)),
                    answer: Some(answer.clone()),
                    tests: None,
                    teacher: None,
                }
            })
            .collect();
        let test_tasks = tasks[train..].to_vec();
        let mut train_tasks = tasks;
        train_tasks.truncate(train);
        Ok((train_tasks, test_tasks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_right_distinct_and_split_disjointly() {
        let generator = Arithmetic {
            max_operand: 9,
            operations: vec![Operation::Add, Operation::Subtract, Operation::Multiply],
            seed: 3,
            ..Arithmetic::default()
        };
        let (train, test) = generator.split(150, 50).unwrap();
        assert_eq!((train.len(), test.len()), (150, 50));
        let mut prompts: Vec<&str> = train
            .iter()
            .chain(&test)
            .map(|t| t.prompt.as_str())
            .collect();
        prompts.sort();
        prompts.dedup();
        assert_eq!(prompts.len(), 200);
        for task in train.iter().chain(&test) {
            let p = &task.prompt;
            let at = p.find(['+', '-', '*']).unwrap();
            let (a, b): (i64, i64) = (p[..at].parse().unwrap(), p[at + 1..].parse().unwrap());
            let expected = match &p[at..at + 1] {
                "+" => a + b,
                "-" => a - b,
                _ => a * b,
            };
            assert!(expected >= 0);
            assert_eq!(task.answer.as_deref(), Some(expected.to_string().as_str()));
        }
        assert_eq!(generator.split(150, 50).unwrap().0, train);
        assert!(generator.split(400, 0).is_err());
        let none = Arithmetic {
            operations: vec![],
            ..generator.clone()
        };
        assert!(none.split(1, 0).is_err());
        let worded = Arithmetic {
            template: "What is {question}?".into(),
            reference: "{question} = {answer}\n#### {answer}".into(),
            ..generator
        };
        let first = &worded.split(1, 0).unwrap().0[0];
        let (question, answer) = (&train[0].prompt, train[0].answer.as_deref().unwrap());
        assert_eq!(first.prompt, format!("What is {question}?"));
        assert_eq!(
            first.reference.as_deref(),
            Some(format!("{question} = {answer}\n#### {answer}").as_str())
        );
        assert_eq!(train[0].reference.as_deref(), Some(answer));
    }
}
