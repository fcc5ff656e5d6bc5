//! GGUF files as a weight source: llama.cpp names mapped to Hugging Face names, and the q/k
//! rows of `llama` files un-permuted from llama.cpp's interleaved-RoPE order so that one
//! `rotate_half` RoPE serves both formats (qwen2/qwen3 files keep Hugging Face's order).

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::config::{Architecture, LlamaConfig};
use crate::error::{PolicyError, Result};
use crate::gguf::GgufFile;
use crate::lora::LoraTarget;
use crate::model::Llama;
use crate::weights::WeightSource;

/// Undoes llama.cpp's q/k permutation: rows of each head are stored as `[hd/2, 2]` pairs,
/// Hugging Face keeps them as `[2, hd/2]` halves.
fn unpermute(values: Vec<f32>, heads: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let half = rows / heads / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for two in 0..2 {
                let src = (h * half * 2 + i * 2 + two) * cols;
                let dst = (h * 2 * half + two * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

/// The llama.cpp name of a Hugging Face tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let module = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        projection => LoraTarget::ALL
            .into_iter()
            .find(|t| t.module() == projection)?
            .gguf_module(),
    };
    Some(format!("blk.{layer}.{module}.{kind}"))
}

/// A GGUF file read through Hugging Face names.
struct GgufSource<'a> {
    file: &'a GgufFile,
    config: &'a LlamaConfig,
    /// Whether q/k rows are in llama.cpp's permuted order (`general.architecture = llama`).
    permuted: bool,
}

impl WeightSource for GgufSource<'_> {
    fn path(&self) -> &Path {
        &self.file.path
    }

    fn file_name(&self, name: &str) -> String {
        gguf_name(name).unwrap_or_else(|| name.to_string())
    }

    fn contains(&self, name: &str) -> Result<bool> {
        Ok(gguf_name(name).is_some_and(|gguf| self.file.tensor(&gguf).is_some()))
    }

    fn read(&self, name: &str, _expected: &[usize]) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let Some(gguf) = gguf_name(name) else {
            return Ok(None);
        };
        if self.file.tensor(&gguf).is_none() {
            return Ok(None);
        }
        let (mut values, shape) = self.file.dequantize(&gguf)?;
        let heads = match name.rsplit('.').nth(1) {
            Some("q_proj") => self.config.num_attention_heads,
            Some("k_proj") => self.config.num_key_value_heads,
            _ => 0,
        };
        let rows_per_head = 2 * (self.config.head_dim / 2);
        if self.permuted && heads > 0 && shape.first() == Some(&(heads * rows_per_head)) {
            let cols = shape.get(1).copied().unwrap_or(1);
            values = unpermute(values, heads, cols);
        }
        Ok(Some((values, shape)))
    }
}

impl<B: Backend> Llama<B> {
    /// Loads a model from a GGUF file (dequantizing every tensor to f32).
    pub fn from_gguf(file: &GgufFile, device: &B::Device) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        // Blocks beyond `block_count` would be dropped silently: a file that says fewer blocks
        // than it holds is corrupt.
        let blocks = file
            .tensors
            .iter()
            .filter_map(|t| {
                t.name
                    .strip_prefix("blk.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |last| last + 1);
        if blocks > config.num_hidden_layers {
            return Err(PolicyError::Corrupt {
                path: file.path.clone(),
                detail: format!(
                    "metadata block_count is {} but the file holds tensors of {blocks} blocks",
                    config.num_hidden_layers
                ),
            });
        }
        let source = GgufSource {
            file,
            config: &config,
            permuted: config.architecture == Architecture::Llama,
        };
        Self::from_source(&config, &source, device)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // One head of 4 rows, 1 column: HF rows [a0, a1, b0, b1] are stored as [a0, b0, a1, b1].
        assert_eq!(
            super::unpermute(vec![0., 2., 1., 3.], 1, 1),
            vec![0., 1., 2., 3.]
        );
        // Two heads, two columns.
        let stored = vec![
            0., 0., 2., 2., 1., 1., 3., 3., 4., 4., 6., 6., 5., 5., 7., 7.,
        ];
        let hf: Vec<f32> = (0..8).flat_map(|i| [i as f32; 2]).collect();
        assert_eq!(super::unpermute(stored, 2, 2), hf);
    }

    #[test]
    fn hugging_face_names_map_to_llama_cpp_names() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.layers.3.self_attn.q_proj.bias", "blk.3.attn_q.bias"),
            (
                "model.layers.12.mlp.down_proj.weight",
                "blk.12.ffn_down.weight",
            ),
            (
                "model.layers.0.self_attn.k_norm.weight",
                "blk.0.attn_k_norm.weight",
            ),
            ("lm_head.weight", "output.weight"),
        ] {
            assert_eq!(super::gguf_name(hf).as_deref(), Some(gguf));
        }
        assert_eq!(super::gguf_name("model.layers.0.unknown.weight"), None);
    }
}
