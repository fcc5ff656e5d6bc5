//! The math environment: the final number of an answer against the task's.

use crate::task::{Environment, Outcome, Task};

/// The final answer of `response`: the first number after the last `####` when there is one
/// (GSM8K's convention), else the last number in the text. Thousands separators, a leading `$`
/// and a trailing `.` are ignored; `None` when there is no number.
pub fn final_number(response: &str) -> Option<f64> {
    match response.rfind("####") {
        Some(at) => numbers(&response[at + 4..]).into_iter().next(),
        None => numbers(response).into_iter().last(),
    }
}

/// Every number in `text`, in order: `-12`, `1,234`, `3.5`.
fn numbers(text: &str) -> Vec<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            || (chars[i] == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if !starts {
            i += 1;
            continue;
        }
        let mut literal = String::from(chars[i]);
        i += 1;
        while i < chars.len() {
            let c = chars[i];
            let digit_follows = chars.get(i + 1).is_some_and(char::is_ascii_digit);
            if c.is_ascii_digit() {
                literal.push(c);
            } else if c == ',' && digit_follows {
                // A thousands separator: dropped.
            } else if c == '.' && digit_follows && !literal.contains('.') {
                literal.push(c);
            } else {
                break;
            }
            i += 1;
        }
        if let Ok(value) = literal.parse() {
            found.push(value);
        }
    }
    found
}

/// Grades math answers: reward 1 when the [`final_number`] of the answer equals the task's
/// `answer` (within 1e-6), else 0. Feedback (SDPO's privileged context) says what was wrong:
/// no final number, or a wrong one, and, when `reveal_answer`, what the right one is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MathAnswer {
    /// Whether the feedback on a wrong answer names the right one.
    pub reveal_answer: bool,
}

impl Environment for MathAnswer {
    fn ungradable(&self, task: &Task) -> Option<String> {
        match task.answer.as_deref() {
            None => Some("no `answer` (the final number an answer is graded against)".into()),
            Some(answer) => final_number(answer)
                .is_none()
                .then(|| format!("the `answer` {answer:?} holds no number to grade against")),
        }
    }

    fn evaluate(&self, task: &Task, response: &str) -> Outcome {
        let expected = task.answer.as_deref().and_then(final_number);
        let given = final_number(response);
        let correct = matches!((given, expected), (Some(g), Some(e)) if (g - e).abs() <= 1e-6);
        let feedback = (!correct).then(|| {
            let what = match given {
                None => "The answer has no final number; end it with `#### <number>`.".to_string(),
                Some(g) => format!("The final answer {g} is wrong."),
            };
            match (self.reveal_answer, &task.answer) {
                (true, Some(answer)) => format!("{what} The correct answer is {answer}."),
                _ => what,
            }
        });
        Outcome {
            reward: f64::from(u8::from(correct)),
            correct,
            feedback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_number_follows_gsm8k_then_the_last_number() {
        assert_eq!(final_number("3 + 4 = 7\n#### 7"), Some(7.0));
        assert_eq!(final_number("#### 1,234.50."), Some(1234.5));
        assert_eq!(
            final_number("so 12 apples, then 15. #### $-3 left"),
            Some(-3.0)
        );
        assert_eq!(final_number("first 3, then 5."), Some(5.0));
        assert_eq!(final_number("a-b is 4-5"), Some(-5.0));
        assert_eq!(final_number("#### none"), None);
        assert_eq!(final_number("no number"), None);
        assert_eq!(final_number("82"), Some(82.0));
    }

    #[test]
    fn rewards_and_feedback() {
        let task = Task::with_answer("2+2", "4");
        let env = MathAnswer::default();
        assert!(env.evaluate(&task, "2+2 is 4.\n#### 4").correct);
        assert!(env.evaluate(&task, "4.0").correct);
        let wrong = env.evaluate(&task, "#### 5");
        assert_eq!((wrong.reward, wrong.correct), (0.0, false));
        assert_eq!(
            wrong.feedback.as_deref(),
            Some("The final answer 5 is wrong.")
        );
        let revealing = MathAnswer {
            reveal_answer: true,
        };
        let none = revealing.evaluate(&task, "I do not know");
        assert!(none.feedback.unwrap().contains("no final number"));
        assert!(
            revealing
                .evaluate(&task, "3")
                .feedback
                .unwrap()
                .ends_with("The correct answer is 4.")
        );
    }
}
