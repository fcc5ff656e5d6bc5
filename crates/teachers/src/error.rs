//! Typed errors of teachers.

/// Why a teacher could not be built or could not score.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// An external teacher whose vocabulary is not the student's.
    #[error(
        "the teacher's vocabulary ({teacher} tokens) is not the student's ({student} tokens){}",
        first_difference.as_ref().map_or(String::new(), |(id, t, s)| format!(
            "; token {id} is {t:?} for the teacher and {s:?} for the student"
        ))
    )]
    VocabularyMismatch {
        /// The teacher's vocabulary size (its logits' last dimension).
        teacher: usize,
        /// The student's.
        student: usize,
        /// The first id whose token differs: `(id, teacher's, student's)`.
        first_difference: Option<(u32, String, String)>,
    },
    /// The loss asks for another temperature than the one the teacher scored at.
    #[error(
        "the teacher scored at temperature {teacher}, the loss uses {loss}: they must be the same"
    )]
    TemperatureMismatch {
        /// The teacher's.
        teacher: f64,
        /// The loss's.
        loss: f64,
    },
    /// The output has another support than the one the caller converts it to.
    #[error("the teacher's output is {have}, the loss needs {want}")]
    WrongSupport {
        /// What the output holds.
        have: &'static str,
        /// What was asked.
        want: &'static str,
    },
    /// A teacher context that does not fit the model.
    #[error(
        "example {example}: the teacher's context ({context} tokens) and response ({response} tokens) exceed the model's context of {limit}"
    )]
    ContextTooLong {
        /// Row of the batch.
        example: usize,
        /// Tokens of the teacher's context.
        context: usize,
        /// Tokens of the response.
        response: usize,
        /// The model's context length.
        limit: usize,
    },
    /// An argument outside its valid range.
    #[error("invalid argument `{name}` = {value}: {expected}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// The valid range.
        expected: &'static str,
    },
    /// A remote teacher could not be reached in time, refused a request or answered
    /// something else than it was asked.
    #[error("teacher at {url}: {problem}")]
    Remote {
        /// The server.
        url: String,
        /// What went wrong.
        problem: String,
    },
    /// The model, tokenizer, chat template or layout failed.
    #[error(transparent)]
    Policy(#[from] opd_policy::PolicyError),
    /// Scoring failed.
    #[error(transparent)]
    Rollout(#[from] opd_rollout::RolloutError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TeacherError>;
