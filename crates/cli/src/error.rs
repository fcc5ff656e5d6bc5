//! Errors of the command line's library: a file and what is wrong with it, or a library error.

use std::path::PathBuf;

use thiserror::Error;

/// Result of the run helpers.
pub type Result<T> = std::result::Result<T, CliError>;

/// What can stop `opd train`, `opd eval` or `opd compare`.
#[derive(Debug, Error)]
pub enum CliError {
    /// A file or folder cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// A run file is malformed, has an unknown key, or an impossible combination.
    #[error("{}: {problem}", path.display())]
    Config {
        /// The run file.
        path: PathBuf,
        /// What is wrong, with the key (and line, for syntax).
        problem: String,
    },
    /// A run folder has no metrics to plot or resume from.
    #[error("{}: {problem}", path.display())]
    Run {
        /// The run folder or its metrics file.
        path: PathBuf,
        /// What is missing.
        problem: String,
    },
    /// A task that no run could use as it is.
    #[error("{origin}: {problem}")]
    Task {
        /// Where it came from: `file:line`, or the generator and index.
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// The run was asked to stop (SIGINT, SIGTERM) and stopped after a step, with a checkpoint.
    #[error(
        "stopped by {signal} after step {step}; checkpoint {}: continue with --resume",
        checkpoint.display()
    )]
    Stopped {
        /// The signal's name.
        signal: &'static str,
        /// Steps taken.
        step: usize,
        /// The checkpoint written.
        checkpoint: PathBuf,
    },
    /// From the trainer.
    #[error(transparent)]
    Train(#[from] opd_trainers::TrainError),
    /// From the data, its environment or an evaluation.
    #[error(transparent)]
    Tasks(#[from] opd_tasks::TaskError),
    /// From loading or saving a model.
    #[error(transparent)]
    Policy(#[from] opd_policy::PolicyError),
    /// From a plot.
    #[error("plot {}: {problem}", path.display())]
    Plot {
        /// The image.
        path: PathBuf,
        /// What the drawing backend said.
        problem: String,
    },
}

impl From<opd_trainers::parallel::ParallelError> for CliError {
    fn from(e: opd_trainers::parallel::ParallelError) -> Self {
        CliError::Train(e.into())
    }
}
