//! A Llama-family decoder in burn (Llama 2/3, SmolLM2, Qwen2, Qwen3): RMSNorm, RoPE in the
//! Hugging Face `rotate_half` convention, grouped-query attention, SwiGLU MLP, tied or separate
//! output embedding.
//!
//! ```text
//! h_0 = E[ids]
//! h'  = h + W_o · Attn(RoPE(W_q n(h)), RoPE(W_k n(h)), W_v n(h))     n = RMSNorm
//! h   = h' + W_down · (silu(W_gate n(h')) ⊙ W_up n(h'))
//! logits = W_out · n(h_L)                                            W_out = E when tied
//! ```

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend, s};

use crate::config::LlamaConfig;

/// Attention with grouped key/value heads and rotary positions.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection, `d → H·hd`.
    pub q_proj: Linear<B>,
    /// Key projection, `d → KV·hd`.
    pub k_proj: Linear<B>,
    /// Value projection, `d → KV·hd`.
    pub v_proj: Linear<B>,
    /// Output projection, `H·hd → d`.
    pub o_proj: Linear<B>,
    /// Per-head RMSNorm of queries (Qwen3).
    pub q_norm: Option<RmsNorm<B>>,
    /// Per-head RMSNorm of keys (Qwen3).
    pub k_norm: Option<RmsNorm<B>>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// The SwiGLU feed-forward block: `W_down (silu(W_gate x) ⊙ W_up x)`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Gate projection.
    pub gate_proj: Linear<B>,
    /// Up projection.
    pub up_proj: Linear<B>,
    /// Down projection.
    pub down_proj: Linear<B>,
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Self-attention.
    pub self_attn: Attention<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Feed-forward block.
    pub mlp: Mlp<B>,
}

/// A Llama-family causal language model.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// Token embedding `[V, d]`.
    pub embed_tokens: Embedding<B>,
    /// Decoder blocks.
    pub layers: Vec<Block<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Output projection `d → V`; `None` when tied to the embedding.
    pub lm_head: Option<Linear<B>>,
    /// RoPE inverse frequencies `θ^(−2i/hd)`, Llama-3 scaled when the config asks for it.
    inv_freq: Vec<f64>,
}

/// RoPE tables for positions `0..len`: `(cos, sin)`, each `[len, hd/2]`.
fn rope_tables<B: Backend>(inv_freq: &[f64], len: usize, device: &B::Device) -> [Tensor<B, 2>; 2] {
    let half = inv_freq.len();
    let angles: Vec<f64> = (0..len)
        .flat_map(|p| inv_freq.iter().map(move |f| p as f64 * f))
        .collect();
    let table = |f: fn(f64) -> f64| {
        let v: Vec<f32> = angles.iter().map(|&a| f(a) as f32).collect();
        Tensor::from_data(TensorData::new(v, [len, half]), device)
    };
    [table(f64::cos), table(f64::sin)]
}

/// `x·cos + rotate_half(x)·sin` on `[B, heads, T, hd]`, `rotate_half(x) = [−x₂, x₁]`.
fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    let hd = x.dims()[3];
    let (cos, sin) = (cos.clone().unsqueeze::<4>(), sin.clone().unsqueeze::<4>());
    let x1 = x.clone().slice(s![.., .., .., 0..hd / 2]);
    let x2 = x.slice(s![.., .., .., hd / 2..hd]);
    Tensor::cat(
        vec![
            x1.clone() * cos.clone() - x2.clone() * sin.clone(),
            x2 * cos + x1 * sin,
        ],
        3,
    )
}

/// Additive causal mask `[T, T]`: 0 on and below the diagonal, −∞ above.
fn causal_mask<B: Backend>(len: usize, device: &B::Device) -> Tensor<B, 2> {
    let v: Vec<f32> = (0..len * len)
        .map(|i| {
            if i % len > i / len {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [len, len]), device)
}

/// Inverse frequencies `θ^(−2i/hd)`, with Llama-3 scaling when configured.
pub(crate) fn inverse_frequencies(config: &LlamaConfig) -> Vec<f64> {
    let hd = config.head_dim as f64;
    (0..config.head_dim / 2)
        .map(|i| config.rope_theta.powf(-((2 * i) as f64) / hd))
        .map(|f| match config.rope_scaling {
            None => f,
            Some(s) => {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let original = s.original_max_position_embeddings as f64;
                let (low, high) = (original / s.low_freq_factor, original / s.high_freq_factor);
                if wavelen < high {
                    f
                } else if wavelen > low {
                    f / s.factor
                } else {
                    let smooth = (original / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            }
        })
        .collect()
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &[Tensor<B, 2>; 2],
        mask: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [batch, len, _] = x.dims();
        let heads = |t: Tensor<B, 3>, n: usize, norm: &Option<RmsNorm<B>>| {
            let t = t.reshape([batch, len, n, self.head_dim]);
            let t = match norm {
                Some(norm) => norm.forward(t),
                None => t,
            };
            t.swap_dims(1, 2)
        };
        let q = heads(self.q_proj.forward(x.clone()), self.heads, &self.q_norm);
        let k = heads(self.k_proj.forward(x.clone()), self.kv_heads, &self.k_norm);
        let v = heads(self.v_proj.forward(x), self.kv_heads, &None);
        let (q, k) = (
            apply_rope(q, &rope[0], &rope[1]),
            apply_rope(k, &rope[0], &rope[1]),
        );
        let group = self.heads / self.kv_heads;
        let repeat = |t: Tensor<B, 4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([batch, self.kv_heads, group, len, self.head_dim])
                .reshape([batch, self.heads, len, self.head_dim])
        };
        let (k, v) = (repeat(k), repeat(v));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .div_scalar((self.head_dim as f64).sqrt())
            + mask.clone().unsqueeze::<4>();
        let out = softmax(scores, 3).matmul(v);
        self.o_proj.forward(
            out.swap_dims(1, 2)
                .reshape([batch, len, self.heads * self.head_dim]),
        )
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

impl<B: Backend> Block<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &[Tensor<B, 2>; 2],
        mask: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let x = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope, mask);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

impl<B: Backend> Llama<B> {
    /// Final hidden states `[B, T, d]` (after the last norm) for token ids `[B, T]`.
    pub fn forward_hidden(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let len = ids.dims()[1];
        let device = ids.device();
        let rope = rope_tables(&self.inv_freq, len, &device);
        let mask = causal_mask(len, &device);
        let x = self
            .layers
            .iter()
            .fold(self.embed_tokens.forward(ids), |x, block| {
                block.forward(x, &rope, &mask)
            });
        self.norm.forward(x)
    }

    /// Next-token logits `[B, T, V]` for token ids `[B, T]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.project(self.forward_hidden(ids))
    }

    /// The output projection of hidden states `[B, T, d]` to logits `[B, T, V]`.
    pub fn project(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(self.embed_tokens.weight.val().transpose().unsqueeze()),
        }
    }
}

/// Builds a model from named weights in Hugging Face layout (`[out, in]` matrices).
pub(crate) struct Builder<'a, B: Backend> {
    pub config: &'a LlamaConfig,
    pub device: &'a B::Device,
}

impl<B: Backend> Builder<'_, B> {
    pub fn tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(values, shape), self.device)
    }

    /// A linear layer from an `[out, in]` matrix and an optional bias.
    pub fn linear(&self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Linear<B> {
        Linear {
            weight: Param::from_tensor(weight.transpose()),
            bias: bias.map(Param::from_tensor),
        }
    }

    pub fn norm(&self, gamma: Tensor<B, 1>) -> RmsNorm<B> {
        RmsNorm {
            gamma: Param::from_tensor(gamma),
            epsilon: self.config.rms_norm_eps,
        }
    }

    pub fn attention(
        &self,
        [q, k, v, o]: [Linear<B>; 4],
        qk_norm: Option<[RmsNorm<B>; 2]>,
    ) -> Attention<B> {
        let (q_norm, k_norm) = match qk_norm {
            Some([q, k]) => (Some(q), Some(k)),
            None => (None, None),
        };
        Attention {
            q_proj: q,
            k_proj: k,
            v_proj: v,
            o_proj: o,
            q_norm,
            k_norm,
            heads: self.config.num_attention_heads,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    pub fn model(
        &self,
        embedding: Tensor<B, 2>,
        layers: Vec<Block<B>>,
        norm: RmsNorm<B>,
        lm_head: Option<Linear<B>>,
    ) -> Llama<B> {
        Llama {
            embed_tokens: Embedding {
                weight: Param::from_tensor(embedding),
            },
            layers,
            norm,
            lm_head,
            inv_freq: inverse_frequencies(self.config),
        }
    }
}
