//! Errors of reading, generating and grading tasks.

use thiserror::Error;

/// Result of every fallible task operation.
pub type Result<T> = std::result::Result<T, TaskError>;

/// A data file, a generator's or an environment's setting, or an evaluation that failed.
#[derive(Debug, Error)]
pub enum TaskError {
    /// A setting is out of range or inconsistent with another.
    #[error("config field `{field}` = {value}: expected {expected}")]
    Config {
        /// The field, as written in a config file (`data.arithmetic`).
        field: &'static str,
        /// The value found.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// A data file cannot be read or written, or one of its rows is malformed.
    #[error("{}:{line}: {problem}", path.display())]
    Data {
        /// The file.
        path: std::path::PathBuf,
        /// The 1-based line (0 when the file itself cannot be read).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// From the tokenizer or the model.
    #[error(transparent)]
    Policy(#[from] opd_policy::PolicyError),
    /// From sampling.
    #[error(transparent)]
    Rollout(#[from] opd_rollout::RolloutError),
}
