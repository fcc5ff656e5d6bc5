//! `opd data`: a run file's training and held-out tasks written as JSONL, to read them, to
//! train on exactly them with another tool, or to freeze a generated set.

use std::error::Error;
use std::path::PathBuf;

use clap::Args;
use opd_cli::RunConfig;
use opd_cli::setup::splits;

/// Arguments of `opd data`.
#[derive(Args)]
pub struct DataArgs {
    /// A run file: its `[data]` section says which tasks (files, or generated arithmetic).
    #[arg(long)]
    config: PathBuf,
    /// The folder to write `train.jsonl` and `test.jsonl` into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Writes the run file's two splits, one task a line (`prompt`, `reference`, `answer`, `tests`
/// as [`opd_tasks::data::write_jsonl`] writes them).
pub fn run(args: DataArgs) -> Result<(), Box<dyn Error>> {
    let config = RunConfig::from_file(&args.config)?;
    let (train, test) = splits(&config.data)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    for (name, split) in [("train.jsonl", &train), ("test.jsonl", &test)] {
        let path = args.out.join(name);
        opd_tasks::data::write_jsonl(&path, &split.tasks)?;
        println!("{}: {} tasks", path.display(), split.tasks.len());
    }
    Ok(())
}
