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
    let (model, tokenizer) = opd_policy::load::<Flex>(&args.model, &Default::default())?;
    let dtype = match args.dtype {
        Precision::F32 => SaveDtype::F32,
        Precision::Bf16 => SaveDtype::Bf16,
    };
    opd_policy::save(&model, &tokenizer, &args.out, dtype)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
