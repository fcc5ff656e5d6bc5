//! `opd train CONFIG [--resume]`: a run file trained to the end.

use std::error::Error;
use std::path::PathBuf;

use burn::backend::Autodiff;
use clap::Args;
use opd_cli::RunConfig;
use opd_cli::run::train;

use crate::BackendChoice;
use crate::generate::default_backend;

/// Arguments of `opd train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The run file (TOML): model, data, environment, output, and the trainer's settings under
    /// `[train]`. See `configs/` for one per method.
    config: PathBuf,
    /// Continue the run in `output.dir` from its newest checkpoint; the steps after it are the
    /// ones an unbroken run takes.
    #[arg(long)]
    resume: bool,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendChoice,
}

/// Runs `opd train`.
pub fn run(args: TrainArgs) -> Result<(), Box<dyn Error>> {
    let config = RunConfig::from_file(&args.config)?;
    let report = match args.backend {
        #[cfg(feature = "flex")]
        BackendChoice::Flex => {
            train::<Autodiff<burn::backend::Flex>>(&config, args.resume, &Default::default())?
        }
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu => {
            train::<Autodiff<burn::backend::Wgpu>>(&config, args.resume, &Default::default())?
        }
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => {
            train::<Autodiff<burn::backend::Cuda>>(&config, args.resume, &Default::default())?
        }
    };
    let accuracy = report
        .evaluation
        .map(|e| format!(", held-out accuracy {:.3}", e.accuracy))
        .unwrap_or_default();
    eprintln!(
        "{} steps, {} generated tokens{accuracy}; wrote {}",
        report.steps,
        report.generated_tokens,
        report.dir.display()
    );
    Ok(())
}
