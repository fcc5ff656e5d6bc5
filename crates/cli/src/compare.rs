//! `opd compare RUN...`: several runs' learning curves on one plot.

use std::error::Error;
use std::path::{Path, PathBuf};

use clap::Args;
use opd_cli::plot::plot_runs;

/// Arguments of `opd compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// Run folders (each with a `metrics.jsonl`).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where to write the plot: `OUT.png` and `OUT.svg`.
    #[arg(long, default_value = "compare")]
    out: PathBuf,
}

/// Runs `opd compare`: one line per run in each panel, and a table of each run's last
/// held-out accuracy.
pub fn run(args: CompareArgs) -> Result<(), Box<dyn Error>> {
    let names: Vec<String> = args.runs.iter().map(|r| r.display().to_string()).collect();
    let runs: Vec<(&str, &Path)> = names
        .iter()
        .map(String::as_str)
        .zip(args.runs.iter().map(PathBuf::as_path))
        .collect();
    let all = plot_runs(&runs, &args.out)?;
    println!(
        "{:<40} {:>8} {:>18} {:>10}",
        "run", "steps", "generated tokens", "accuracy"
    );
    for (name, records) in names.iter().zip(&all) {
        let last_eval = records.iter().rev().find_map(|r| r.eval());
        let steps = records.iter().filter(|r| r.train().is_some()).count();
        let tokens = last_eval.map(|e| e.generated_tokens_total);
        let accuracy = last_eval.map(|e| e.accuracy);
        println!(
            "{name:<40} {steps:>8} {:>18} {:>10}",
            tokens.map_or("-".into(), |t| t.to_string()),
            accuracy.map_or("-".into(), |a| format!("{a:.3}"))
        );
    }
    eprintln!("wrote {}.png and .svg", args.out.display());
    Ok(())
}
