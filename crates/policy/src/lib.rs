//! # opd-policy
//!
//! The policy layer of opd: reading real checkpoints. This first part is the GGUF reader
//! ([`gguf`]): the container (metadata and tensor directory, every length checked against the
//! file) and dequantization of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K to f32.

pub mod error;
pub mod gguf;

pub use error::{PolicyError, Result};
