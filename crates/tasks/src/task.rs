//! Tasks and the environments that grade answers to them.

/// One training or evaluation problem; one row of a JSONL data file
/// (`{"prompt": …, "reference": …, "answer": …, "tests": …, "teacher": …}`, only `prompt`
/// required).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// The question, as the user turn of the chat template.
    pub prompt: String,
    /// A worked solution or demonstration: SFT's target, OPSD's and SDFT's privileged context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The final answer an environment checks against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Tests a code environment runs against the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<String>,
    /// The name of the teacher that scores answers to this task, in a run with several
    /// (on-policy distillation from `[[teachers]]`); absent: the run's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
}

impl Task {
    /// A task with a question and its final answer, which is also its reference.
    pub fn with_answer(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        let answer = answer.into();
        Self {
            prompt: prompt.into(),
            reference: Some(answer.clone()),
            answer: Some(answer),
            tests: None,
            teacher: None,
        }
    }
}

/// An environment's verdict on one answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// The reward (GRPO's `r_i`).
    pub reward: f64,
    /// Whether the answer is correct (for accuracy metrics).
    pub correct: bool,
    /// Text feedback on the attempt (compiler errors, a wrong result), SDPO's privileged
    /// context; `None` when there is nothing to say.
    pub feedback: Option<String>,
}

/// Grades an answer to a task: reward, correctness and optional feedback. Math and code
/// environments implement it; [`ExactAnswer`] is the simplest.
pub trait Environment {
    /// The verdict on `response` (the decoded answer, special tokens dropped) to `task`.
    fn evaluate(&self, task: &Task, response: &str) -> Outcome;

    /// Why no answer to `task` could ever be graded correct (no `answer`, no tests), so that
    /// a run refuses the task when its data loads instead of scoring it 0. `None` when it can.
    fn ungradable(&self, task: &Task) -> Option<String> {
        let _ = task;
        None
    }
}

/// Reward 1 when the answer, trimmed, equals the task's `answer`, else 0; a wrong answer's
/// feedback names the expected one (a verifier that reveals the answer, as a failing unit test
/// does).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactAnswer;

impl Environment for ExactAnswer {
    fn evaluate(&self, task: &Task, response: &str) -> Outcome {
        let expected = task.answer.as_deref().unwrap_or_default();
        let given = response.trim();
        let correct = given == expected;
        Outcome {
            reward: if correct { 1.0 } else { 0.0 },
            correct,
            feedback: (!correct).then(|| format!("{given} is wrong, the answer is {expected}")),
        }
    }

    fn ungradable(&self, task: &Task) -> Option<String> {
        task.answer
            .is_none()
            .then(|| "no `answer` to compare with".to_string())
    }
}

/// A boxed environment is an environment: runs choose theirs from a config file.
impl<E: Environment + ?Sized> Environment for Box<E> {
    fn ungradable(&self, task: &Task) -> Option<String> {
        (**self).ungradable(task)
    }

    fn evaluate(&self, task: &Task, response: &str) -> Outcome {
        (**self).evaluate(task, response)
    }
}

/// A shared environment is an environment: the trainer and a held-out evaluation grade with
/// the same one.
impl<E: Environment + ?Sized> Environment for std::rc::Rc<E> {
    fn ungradable(&self, task: &Task) -> Option<String> {
        (**self).ungradable(task)
    }

    fn evaluate(&self, task: &Task, response: &str) -> Outcome {
        (**self).evaluate(task, response)
    }
}
