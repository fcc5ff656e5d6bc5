//! `opd`: the command line of opd.
//!
//! ```text
//! opd train configs/opsd.toml                 # --resume continues from the newest checkpoint
//! opd eval --config configs/opsd.toml --samples 8 --temperature 1
//! opd data --config configs/opsd.toml --out tasks   # its train.jsonl and test.jsonl
//! opd compare runs/sft runs/opd runs/grpo --out compare
//! opd generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf --prompt "What is 2 + 2?" --chat
//! opd export --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2-hf --dtype bf16
//! opd serve --model models/SmolLM2-135M-Instruct.Q4_1.gguf --listen 127.0.0.1:8000
//! ```

mod compare;
mod data;
#[cfg(feature = "flex")]
mod eval;
#[cfg(feature = "flex")]
mod export;
mod generate;
mod serve;
mod stream;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// On-policy distillation for Llama-family models.
#[derive(Parser)]
#[command(name = "opd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The compute backend.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendChoice {
    /// CPU (burn's Flex backend).
    #[cfg(feature = "flex")]
    Flex,
    /// Vulkan, Metal or DirectX through wgpu.
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// NVIDIA CUDA.
    #[cfg(feature = "cuda")]
    Cuda,
}

/// `$run::<B>($args)` on the backend `$choice` names (generic commands dispatch here).
macro_rules! on_backend {
    ($choice:expr, $run:ident, $args:expr) => {
        match $choice {
            #[cfg(feature = "flex")]
            $crate::BackendChoice::Flex => $run::<burn::backend::Flex>($args),
            #[cfg(feature = "wgpu")]
            $crate::BackendChoice::Wgpu => $run::<burn::backend::Wgpu>($args),
            #[cfg(feature = "cuda")]
            $crate::BackendChoice::Cuda => $run::<burn::backend::Cuda>($args),
        }
    };
}
pub(crate) use on_backend;

#[derive(Subcommand)]
enum Command {
    /// Train a student with a run file (SFT, GRPO, OPD, OPSD, SDFT or SDPO).
    Train(train::TrainArgs),
    /// Accuracy (avg@k) and pass@k of a model on held-out tasks.
    #[cfg(feature = "flex")]
    Eval(eval::EvalArgs),
    /// Write a run file's training and held-out tasks as JSONL.
    Data(data::DataArgs),
    /// Plot several runs' learning curves together and tabulate their accuracy.
    Compare(compare::CompareArgs),
    /// Sample answers to a prompt from a GGUF file or a Hugging Face folder.
    Generate(generate::GenerateArgs),
    /// Write a model (GGUF or Hugging Face) as a Hugging Face folder that transformers loads.
    #[cfg(feature = "flex")]
    Export(export::ExportArgs),
    /// Score student tokens over HTTP: a teacher for trainers on other machines.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    opd_policy::allocator::tune();
    if std::env::args().nth(1).as_deref() == Some("serve") {
        opd_policy::allocator::tune_for_service();
    }
    use tracing_subscriber::prelude::*;
    // burn's collective layer and transport say each connection at `info`.
    let quiet = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("burn_collective", tracing::Level::WARN)
        .with_target("burn_communication", tracing::Level::WARN);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .without_time(),
        )
        .with(quiet)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => match train::run(args) {
            Ok(code) => return code,
            Err(error) => Err(error),
        },
        #[cfg(feature = "flex")]
        Command::Eval(args) => eval::run(args),
        Command::Data(args) => data::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Generate(args) => generate::run(args),
        #[cfg(feature = "flex")]
        Command::Export(args) => export::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`opd generate … | head -c1`): nothing left to tell it.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            let message = error.to_string();
            eprintln!("error: {message}");
            let mut source = error.source();
            while let Some(cause) = source {
                // Most of our errors already say their cause; print only what they do not.
                let cause_text = cause.to_string();
                if !message.contains(&cause_text) {
                    eprintln!("  caused by: {cause_text}");
                }
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
