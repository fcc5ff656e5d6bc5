//! `opd export`: write a model as a Hugging Face folder that `transformers` loads.

use std::error::Error;
use std::path::PathBuf;

use burn::backend::Flex;
use clap::{Args, ValueEnum};
use opd_policy::SaveDtype;

/// Arguments of `opd export`.
#[derive(Args)]
pub struct ExportArgs {
    /// A `.gguf` file or a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    /// The folder to write (`model.safetensors`, `config.json`, tokenizer files).
    #[arg(long)]
    out: PathBuf,
    /// Precision of the written weights.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Write into `--out` even when it holds files (opd's files are replaced, others stay).
    #[arg(long)]
    force: bool,
}

/// Precision of the written weights.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Precision {
    /// 32-bit floats: exact.
    F32,
    /// bfloat16: half the size.
    Bf16,
}

/// Loads `--model` on the CPU and saves it to `--out` (a GGUF file becomes f32 or bf16
/// safetensors: quantized weights are dequantized).
pub fn run(args: ExportArgs) -> Result<(), Box<dyn Error>> {
    // Checked before the model loads: a folder with another model's files (shards, an index)
    // would mix with the new ones.
    let holds_files = std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some());
    if holds_files && !args.force {
        return Err(format!(
            "{} is not empty: choose an empty or new folder, or pass --force to write into it",
            args.out.display()
        )
        .into());
    }
    let (model, tokenizer) = opd_policy::load::<Flex>(&args.model, &Default::default())?;
    let dtype = match args.dtype {
        Precision::F32 => SaveDtype::F32,
        Precision::Bf16 => SaveDtype::Bf16,
    };
    opd_policy::save(&model, &tokenizer, &args.out, dtype)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
