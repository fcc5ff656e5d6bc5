//! # opd-policy
//!
//! The policy layer of opd: real Llama-family checkpoints in burn.
//!
//! - [`Llama`]: the model (Llama 2/3, SmolLM2, Qwen2, Qwen3) with a KV cache, left-padded
//!   batches and LoRA adapters; the [`Policy`] trait is what the layers above use.
//! - Weights from GGUF ([`gguf`]: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K dequantized)
//!   and Hugging Face folders (sharded safetensors, F32/F16/BF16), saved back as the latter.
//! - [`ChatTokenizer`]: the `tokenizers` pipeline from `tokenizer.json` or GGUF metadata,
//!   special token ids, and the chat template rendered with minijinja.
//! - [`params`]: frozen snapshots and EMA updates for teachers.
//! - [`SequenceBatch`]: the one layout of (context, response) rows that the training forward
//!   ([`Policy::response_logits`]), every teacher, scoring and the losses share; response
//!   token `t` of a row is at index `t` of every `[B, R, ·]` output, whatever its context.
//!
//! **Masks** follow one convention across opd: a `Bool` tensor, `true` where the position
//! counts. See [`policy`] for when to run the autodiff model and when its `valid()` copy.
//!
//! ```no_run
//! use burn::backend::Flex;
//! use opd_policy::{Message, Policy};
//!
//! let device = Default::default();
//! let (model, tokenizer) = opd_policy::load::<Flex>("models/SmolLM2-135M-Instruct.Q4_1.gguf", &device)?;
//! let prompt = tokenizer.apply_chat_template(&[Message::user("What is 2 + 2?")], true)?;
//! let ids = tokenizer.encode(&prompt)?;
//! assert_eq!(model.vocab_size(), 49_152);
//! # Ok::<(), opd_policy::PolicyError>(())
//! ```

mod adamw;
pub mod allocator;
mod attention;
#[cfg(feature = "flex")]
mod attention_blocks;
#[cfg(feature = "flex")]
mod attention_grad;
#[cfg(feature = "flex")]
mod bf16_products;
pub mod characters;
pub mod chat;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "flex")]
mod ema_mix;
pub mod error;
#[cfg(feature = "flex")]
mod flex_tensor;
pub mod frozen;
#[cfg(feature = "flex")]
mod frozen_product;
pub mod gguf;
mod kv_cache;
mod load_gguf;
pub mod lora;
pub mod model;
#[cfg(feature = "flex")]
mod norm_grad;
#[cfg(feature = "openblas")]
mod openblas;
pub mod params;
pub mod policy;
mod rope;
#[cfg(feature = "flex")]
mod rope_grad;
#[cfg(feature = "flex")]
mod rope_rotate;
mod row_matmul;
mod safetensors;
pub mod sequence;
#[cfg(feature = "flex")]
mod swiglu_grad;
pub mod tokenizer;
mod weights;

pub use adamw::FusedAdamW;
pub use chat::{ChatTemplate, Message};
pub use checkpoint::{load, save};
pub use config::{Architecture, Llama3RopeScaling, LlamaConfig};
pub use error::{PolicyError, Result, SequenceError};
pub use frozen::FrozenPrecision;
pub use kv_cache::KvCache;
pub use lora::{LoraConfig, LoraTarget};
pub use model::Llama;
pub use policy::{Adapters, Policy, Trainable};
pub use safetensors::SaveDtype;
pub use sequence::SequenceBatch;
pub use tokenizer::{ChatTokenizer, SpecialTokens};
