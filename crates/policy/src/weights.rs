//! Building a [`Llama`] from named tensors in Hugging Face naming, whatever file holds them.

use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::config::LlamaConfig;
use crate::error::{PolicyError, Result};
use crate::model::{Block, Builder, Llama};

/// A store of tensors addressed by their Hugging Face names (`model.layers.0.mlp.up_proj.weight`).
pub(crate) trait WeightSource {
    /// The file named in errors.
    fn path(&self) -> &Path;
    /// The tensor as f32 values and its shape, `None` when the store has no such tensor.
    fn read(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>>;
    /// The tensor's name as the file spells it, for errors (a GGUF file's `blk.0.attn_q.weight`).
    fn file_name(&self, name: &str) -> String {
        name.to_string()
    }
}

/// Reads the tensor `name`, which must exist with shape `expected`.
fn required<S: WeightSource>(source: &S, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
    optional(source, name, expected)?.ok_or_else(|| PolicyError::MissingTensor {
        path: source.path().to_path_buf(),
        name: source.file_name(name),
    })
}

/// Reads the tensor `name` if present; when present its shape must be `expected` and every
/// value finite (NaN or infinity in a weight is found here, once, rather than as garbage
/// output later).
fn optional<S: WeightSource>(
    source: &S,
    name: &str,
    expected: &[usize],
) -> Result<Option<Vec<f32>>> {
    let Some((values, shape)) = source.read(name)? else {
        return Ok(None);
    };
    let name = source.file_name(name);
    if shape != expected {
        return Err(PolicyError::Corrupt {
            path: source.path().to_path_buf(),
            detail: format!("tensor `{name}` has shape {shape:?}, the config implies {expected:?}"),
        });
    }
    let mut bad = values.iter().enumerate().filter(|(_, v)| !v.is_finite());
    if let Some((first, value)) = bad.next() {
        return Err(PolicyError::Corrupt {
            path: source.path().to_path_buf(),
            detail: format!(
                "tensor `{name}` has {} non-finite values (the first, {value}, at index {first})",
                1 + bad.count()
            ),
        });
    }
    Ok(Some(values))
}

impl<B: Backend> Llama<B> {
    /// Builds the model of `config` from `source`, checking every tensor's shape.
    pub(crate) fn from_source<S: WeightSource>(
        config: &LlamaConfig,
        source: &S,
        device: &B::Device,
    ) -> Result<Self> {
        let b = Builder { config };
        let tensor = |values: Vec<f32>, shape: &[usize]| -> Tensor<B, 1> {
            Tensor::from_data(
                TensorData::new(values, [shape.iter().product::<usize>()]),
                device,
            )
        };
        // A bias is read where the config has one and refused where it has none: a file and a
        // config that disagree would compute something else than the model's authors.
        let linear = |name: &str, out: usize, inp: usize, with_bias: bool| -> Result<_> {
            let w = required(source, &format!("{name}.weight"), &[out, inp])?;
            let bias_name = format!("{name}.bias");
            let bias = match with_bias {
                true => Some(required(source, &bias_name, &[out])?),
                false if source.read(&bias_name)?.is_some() => {
                    return Err(PolicyError::Corrupt {
                        path: source.path().to_path_buf(),
                        detail: format!(
                            "tensor `{}` is in the file, but the config gives this layer no bias \
                             (attention_bias = {})",
                            source.file_name(&bias_name),
                            config.attention_bias
                        ),
                    });
                }
                false => None,
            };
            Ok(b.linear(
                tensor(w, &[out, inp]).reshape([out, inp]),
                bias.map(|v| tensor(v, &[out])),
            ))
        };
        let norm = |name: &str, size: usize| -> Result<_> {
            Ok(b.norm(tensor(required(source, name, &[size])?, &[size])))
        };
        let (d, hd, ff) = (
            config.hidden_size,
            config.head_dim,
            config.intermediate_size,
        );
        let (q_out, kv_out) = (
            config.num_attention_heads * hd,
            config.num_key_value_heads * hd,
        );
        let (qkv_bias, o_bias) = (config.attention_bias, config.output_bias());
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}.");
                let qk_norm = match config.qk_norm {
                    true => Some([
                        norm(&format!("{p}self_attn.q_norm.weight"), hd)?,
                        norm(&format!("{p}self_attn.k_norm.weight"), hd)?,
                    ]),
                    false => None,
                };
                Ok(Block {
                    input_layernorm: norm(&format!("{p}input_layernorm.weight"), d)?,
                    self_attn: b.attention(
                        [
                            linear(&format!("{p}self_attn.q_proj"), q_out, d, qkv_bias)?,
                            linear(&format!("{p}self_attn.k_proj"), kv_out, d, qkv_bias)?,
                            linear(&format!("{p}self_attn.v_proj"), kv_out, d, qkv_bias)?,
                            linear(&format!("{p}self_attn.o_proj"), d, q_out, o_bias)?,
                        ],
                        qk_norm,
                    ),
                    post_attention_layernorm: norm(
                        &format!("{p}post_attention_layernorm.weight"),
                        d,
                    )?,
                    mlp: b.mlp([
                        linear(&format!("{p}mlp.gate_proj"), ff, d, false)?,
                        linear(&format!("{p}mlp.up_proj"), ff, d, false)?,
                        linear(&format!("{p}mlp.down_proj"), d, ff, false)?,
                    ]),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let v = config.vocab_size;
        let embedding = required(source, "model.embed_tokens.weight", &[v, d])?;
        let lm_head = match config.tie_word_embeddings {
            true => None,
            false => Some(linear("lm_head", v, d, false)?),
        };
        Ok(b.model(
            tensor(embedding, &[v, d]).reshape([v, d]),
            layers,
            norm("model.norm.weight", d)?,
            lm_head,
        ))
    }
}
