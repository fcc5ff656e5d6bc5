//! GGUF files: the container ([`GgufFile`]) and ggml storage types ([`GgmlType`]).
//!
//! ```no_run
//! let file = opd_policy::gguf::GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers = file.get("llama.block_count")?.as_u64();
//! let (embedding, shape) = file.dequantize("token_embd.weight")?; // [49152, 576] f32
//! # Ok::<(), opd_policy::PolicyError>(())
//! ```

mod quant;
mod reader;

pub use quant::GgmlType;
pub use reader::{GgufFile, TensorInfo, Value};
