//! # opd-policy
//!
//! The policy layer of opd: reading real checkpoints. So far: the GGUF reader ([`gguf`]): the
//! container (metadata and tensor directory, every length checked against the file) and
//! dequantization of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K to f32; and the model
//! configuration ([`LlamaConfig`]) from a Hugging Face `config.json` or GGUF metadata; the
//! model ([`Llama`]) in burn, loaded from GGUF; and tokenizers ([`tokenizer`]) from
//! `tokenizer.json` or GGUF metadata.

pub mod config;
pub mod error;
pub mod gguf;
mod load_gguf;
pub mod model;
pub mod tokenizer;

pub use config::{Llama3RopeScaling, LlamaConfig};
pub use error::{PolicyError, Result};
pub use model::Llama;
