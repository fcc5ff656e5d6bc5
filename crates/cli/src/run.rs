//! `opd train`: a run file's trainer driven to the end, with metrics, evaluations, checkpoints,
//! curves and the final model written into the run folder.
//!
//! The folder holds `config.toml` (a copy of the run file), `metrics.jsonl` (one line per
//! step, `"kind": "train"`, and per evaluation, `"kind": "eval"`), `curves.png`/`.svg`,
//! `step-NNNNNN/` checkpoints (the newest `keep_checkpoints`) and, at the end, `final/`: the
//! student as a Hugging Face folder (adapters merged).

use opd_divergences::TrainingBackend;
use std::sync::atomic::AtomicUsize;

use crate::config::RunConfig;
use crate::error::Result;
use crate::lead::lead;

pub use crate::folder::{METRICS, read_metrics};
pub use crate::lead::{CONFIG, RunReport};

/// Runs `config` into its output folder on `device`: from scratch, or with `resume` from the
/// newest checkpoint there (see [`train_until`]).
pub fn train<B: TrainingBackend>(
    config: &RunConfig,
    resume: bool,
    device: &B::Device,
) -> Result<RunReport> {
    train_until::<B>(config, resume, device, &AtomicUsize::new(0))
}

/// Runs `config` into its output folder on `device`, from scratch or (`resume`) from the
/// newest checkpoint there, until `train.steps`, the budget, or `stop` (a signal number set
/// by a handler; 0 for none) after a step: then a checkpoint is written and the run returns
/// [`CliError::Stopped`].
///
/// The folder has one writer ([`RunFolder::lock`]). A fresh run needs it absent or empty; a
/// resume is checked (config, checkpoint files, not finished) and the tasks loaded and
/// checked before any file is written, so a refused run changes nothing. `docs/run-folder.md`
/// says what the folder guarantees.
pub fn train_until<B: TrainingBackend>(
    config: &RunConfig,
    resume: bool,
    device: &B::Device,
    stop: &AtomicUsize,
) -> Result<RunReport> {
    if config.parallel.is_single() {
        lead::<B>(config, resume, device, stop, None)
    } else {
        crate::parallel::train::<B>(config, resume, device, stop)
    }
}
