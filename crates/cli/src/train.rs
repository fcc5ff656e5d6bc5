//! `opd train CONFIG [--resume]`: a run file trained to the end.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use burn::backend::Autodiff;
use clap::Args;
use opd_cli::run::train_until;
use opd_cli::{CliError, RunConfig};
use signal_hook::consts::{SIGINT, SIGTERM};

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
    /// Workers in this process (threads on the CPU, one GPU each): `parallel.workers`.
    #[arg(long)]
    workers: Option<usize>,
    /// This process's node in a run over several (`parallel.node_rank`; node 0 writes the
    /// run folder).
    #[arg(long)]
    node_rank: Option<usize>,
}

/// The first SIGINT or SIGTERM sets the returned flag to its number (the run then stops after
/// its step, with a checkpoint); a second one ends the process at once with status 128 + n.
fn stop_on_signals() -> std::io::Result<Arc<AtomicUsize>> {
    let stop = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&asked))?;
        signal_hook::flag::register_usize(signal, Arc::clone(&stop), signal as usize)?;
        signal_hook::flag::register(signal, Arc::clone(&asked))?;
    }
    // Say at once that the signal was heard: a step can take minutes.
    let heard = Arc::clone(&stop);
    std::thread::spawn(move || {
        while heard.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "\nstopping after this step, with a checkpoint (send the signal again to stop at once)"
        );
    });
    Ok(stop)
}

/// Runs `opd train`; a run stopped by a signal exits with 128 + the signal's number.
pub fn run(args: TrainArgs) -> Result<ExitCode, Box<dyn Error>> {
    let mut config = RunConfig::from_file(&args.config)?;
    let parallel = &mut config.parallel;
    parallel.workers = args.workers.unwrap_or(parallel.workers);
    parallel.node_rank = args.node_rank.unwrap_or(parallel.node_rank);
    config.check().map_err(|problem| CliError::Config {
        path: args.config.clone(),
        problem,
    })?;
    let stop = stop_on_signals()?;
    let result = match args.backend {
        #[cfg(feature = "flex")]
        BackendChoice::Flex => train_until::<Autodiff<burn::backend::Flex>>(
            &config,
            args.resume,
            &Default::default(),
            &stop,
        ),
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu => train_until::<Autodiff<burn::backend::Wgpu>>(
            &config,
            args.resume,
            &Default::default(),
            &stop,
        ),
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => train_until::<Autodiff<burn::backend::Cuda>>(
            &config,
            args.resume,
            &Default::default(),
            &stop,
        ),
    };
    let report = match result {
        Err(stopped @ CliError::Stopped { .. }) => {
            eprintln!("{stopped}");
            return Ok(ExitCode::from(128 + stop.load(Ordering::SeqCst) as u8));
        }
        other => other?,
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
    Ok(ExitCode::SUCCESS)
}
