//! Building a [`Llama`] from a GGUF file: names mapped to Hugging Face layout, q/k rows
//! un-permuted from llama.cpp's interleaved-RoPE order so that one `rotate_half` RoPE serves
//! both formats.

use burn::tensor::backend::Backend;

use crate::config::LlamaConfig;
use crate::error::{PolicyError, Result};
use crate::gguf::GgufFile;
use crate::model::{Block, Builder, Llama, Mlp};

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

impl<B: Backend> Llama<B> {
    /// Loads a model from a GGUF file (dequantizing every tensor to f32).
    pub fn from_gguf(file: &GgufFile, device: &B::Device) -> Result<(Self, LlamaConfig)> {
        let config = LlamaConfig::from_gguf(file)?;
        let b = Builder::<B> {
            config: &config,
            device,
        };
        let load = |name: &str, expected: &[usize]| -> Result<Vec<f32>> {
            let (values, shape) = file.dequantize(name)?;
            if shape != expected {
                return Err(PolicyError::Corrupt {
                    path: file.path.clone(),
                    detail: format!(
                        "tensor `{name}` has shape {shape:?}, the config implies {expected:?}"
                    ),
                });
            }
            Ok(values)
        };
        let (d, hd) = (config.hidden_size, config.head_dim);
        let (q_out, kv_out) = (
            config.num_attention_heads * hd,
            config.num_key_value_heads * hd,
        );
        let linear =
            |name: &str, out: usize, inp: usize, permute_heads: Option<usize>| -> Result<_> {
                let mut w = load(name, &[out, inp])?;
                if let Some(heads) = permute_heads {
                    w = unpermute(w, heads, inp);
                }
                let bias_name = name.replace(".weight", ".bias");
                let bias = match file.tensor(&bias_name) {
                    Some(_) => Some(b.tensor(load(&bias_name, &[out])?, [out])),
                    None => None,
                };
                Ok(b.linear(b.tensor(w, [out, inp]), bias))
            };
        let norm = |name: &str, size: usize| -> Result<_> {
            Ok(b.norm(b.tensor(load(name, &[size])?, [size])))
        };
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = format!("blk.{l}.");
                // Qwen3 GGUF files keep Hugging Face's row order (llama.cpp uses NEOX RoPE there).
                let permute = |heads| (!config.qk_norm && !config.attention_bias).then_some(heads);
                let qk_norm = if config.qk_norm {
                    Some([
                        norm(&format!("{p}attn_q_norm.weight"), hd)?,
                        norm(&format!("{p}attn_k_norm.weight"), hd)?,
                    ])
                } else {
                    None
                };
                Ok(Block {
                    input_layernorm: norm(&format!("{p}attn_norm.weight"), d)?,
                    self_attn: b.attention(
                        [
                            linear(
                                &format!("{p}attn_q.weight"),
                                q_out,
                                d,
                                permute(config.num_attention_heads),
                            )?,
                            linear(
                                &format!("{p}attn_k.weight"),
                                kv_out,
                                d,
                                permute(config.num_key_value_heads),
                            )?,
                            linear(&format!("{p}attn_v.weight"), kv_out, d, None)?,
                            linear(&format!("{p}attn_output.weight"), d, q_out, None)?,
                        ],
                        qk_norm,
                    ),
                    post_attention_layernorm: norm(&format!("{p}ffn_norm.weight"), d)?,
                    mlp: Mlp {
                        gate_proj: linear(
                            &format!("{p}ffn_gate.weight"),
                            config.intermediate_size,
                            d,
                            None,
                        )?,
                        up_proj: linear(
                            &format!("{p}ffn_up.weight"),
                            config.intermediate_size,
                            d,
                            None,
                        )?,
                        down_proj: linear(
                            &format!("{p}ffn_down.weight"),
                            d,
                            config.intermediate_size,
                            None,
                        )?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embedding = b.tensor(
            load("token_embd.weight", &[config.vocab_size, d])?,
            [config.vocab_size, d],
        );
        let lm_head = match config.tie_word_embeddings {
            true => None,
            false => Some(linear("output.weight", config.vocab_size, d, None)?),
        };
        let model = b.model(embedding, layers, norm("output_norm.weight", d)?, lm_head);
        Ok((model, config))
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
}
