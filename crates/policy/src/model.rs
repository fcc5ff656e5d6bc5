//! A Llama-family decoder in burn (Llama 2/3, SmolLM2, Qwen2, Qwen3): RMSNorm, RoPE in the
//! Hugging Face `rotate_half` convention, grouped-query attention, SwiGLU MLP, tied or separate
//! output embedding, optional LoRA adapters, and a KV cache for incremental decoding.
//!
//! ```text
//! h_0 = E[ids]
//! h'  = h + W_o · Attn(RoPE(W_q n(h)), RoPE(W_k n(h)), W_v n(h))     n = RMSNorm
//! h   = h' + W_down · (silu(W_gate n(h')) ⊙ W_up n(h'))
//! logits = W_out · n(h_L)                                            W_out = E when tied
//! ```

use burn::module::Module;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::activation::silu;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::config::LlamaConfig;
use crate::kv_cache::{KvCache, SlotLayout};
use crate::lora::{LoraConfig, LoraLinear, LoraTarget};
use crate::rope::RopeTables;

/// Attention with grouped key/value heads and rotary positions.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection, `d → H·hd`.
    pub q_proj: LoraLinear<B>,
    /// Key projection, `d → KV·hd`.
    pub k_proj: LoraLinear<B>,
    /// Value projection, `d → KV·hd`.
    pub v_proj: LoraLinear<B>,
    /// Output projection, `H·hd → d`.
    pub o_proj: LoraLinear<B>,
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
    pub gate_proj: LoraLinear<B>,
    /// Up projection.
    pub up_proj: LoraLinear<B>,
    /// Down projection.
    pub down_proj: LoraLinear<B>,
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
    /// The architecture.
    #[module(skip)]
    pub config: LlamaConfig,
    /// RoPE inverse frequencies (see [`crate::rope::inverse_frequencies`]).
    #[module(skip)]
    inv_freq: Vec<f64>,
}

/// `norm(x)`: on `Autodiff<Flex>` one graph node with a closed-form backward
/// (`norm_grad.rs`), elsewhere burn's ops.
fn normed<B: Backend, const D: usize>(norm: &RmsNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    return crate::norm_grad::rms_norm(norm, x);
    #[cfg(not(feature = "flex"))]
    norm.forward(x)
}

/// What one attention call sees besides its input: rotary tables and the slots' layout.
struct Context<B: Backend> {
    rope: RopeTables<B>,
    layout: SlotLayout,
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        context: &Context<B>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [batch, len, _] = x.dims();
        // `[B, T, n·hd]` → `[B, n, T, hd]`, normed (Qwen3) and rotated.
        let rotated = |t: Tensor<B, 3>, n: usize, norm: &Option<RmsNorm<B>>| {
            let t = t.reshape([batch, len, n, self.head_dim]);
            let t = match norm {
                Some(norm) => normed(norm, t),
                None => t,
            };
            context.rope.apply_heads(t)
        };
        let q = rotated(self.q_proj.forward(x.clone()), self.heads, &self.q_norm);
        let k = rotated(self.k_proj.forward(x.clone()), self.kv_heads, &self.k_norm);
        let v = self
            .v_proj
            .forward(x)
            .reshape([batch, len, self.kv_heads, self.head_dim])
            .swap_dims(1, 2);
        let [k, v] = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => [k, v],
        };
        let out = crate::attention::grouped_attention(q, k, v, &context.layout);
        self.o_proj.forward(out)
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
        context: &Context<B>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let x = x.clone()
            + self
                .self_attn
                .forward(normed(&self.input_layernorm, x), context, cache);
        x.clone() + self.mlp.forward(normed(&self.post_attention_layernorm, x))
    }

    fn linears_mut(&mut self) -> [(LoraTarget, &mut LoraLinear<B>); 7] {
        let (attn, mlp) = (&mut self.self_attn, &mut self.mlp);
        [
            (LoraTarget::QProj, &mut attn.q_proj),
            (LoraTarget::KProj, &mut attn.k_proj),
            (LoraTarget::VProj, &mut attn.v_proj),
            (LoraTarget::OProj, &mut attn.o_proj),
            (LoraTarget::GateProj, &mut mlp.gate_proj),
            (LoraTarget::UpProj, &mut mlp.up_proj),
            (LoraTarget::DownProj, &mut mlp.down_proj),
        ]
    }
}

impl<B: Backend> Llama<B> {
    /// Runs the blocks on `ids` `[B, T]` placed at `layout`, appending to `cache` when given.
    fn run(
        &self,
        ids: Tensor<B, 2, Int>,
        layout: &SlotLayout,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let len = ids.dims()[1];
        let device = ids.device();
        let context = Context {
            rope: RopeTables::new(&self.inv_freq, &layout.positions(len), &device),
            layout: layout.clone(),
        };
        let mut x = self.embed_tokens.forward(ids);
        for (l, block) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| (c, l));
            x = block.forward(x, &context, slot);
        }
        if let Some(cache) = cache {
            cache.advance(len);
        }
        normed(&self.norm, x)
    }

    /// Final hidden states `[B, T, d]` (after the last norm) for a left-padded batch `ids`
    /// `[B, T]` whose row `b` starts with `padding[b]` padding tokens.
    pub fn forward_hidden(&self, ids: Tensor<B, 2, Int>, padding: &[usize]) -> Tensor<B, 3> {
        let layout = SlotLayout {
            padding: padding.to_vec(),
            start: 0,
        };
        self.run(ids, &layout, None)
    }

    /// Hidden states `[B, T, d]` of `T` new tokens per row following what `cache` holds;
    /// their keys and values are appended to it.
    pub fn forward_hidden_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let layout = cache.layout();
        self.run(ids, &layout, Some(cache))
    }

    /// Next-token logits `[B, T, V]` of a batch without padding.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let padding = vec![0; ids.dims()[0]];
        self.project(self.forward_hidden(ids, &padding))
    }

    /// The output projection of hidden states `[B, T, d]` to logits `[B, T, V]`. A tied head
    /// multiplies by the transposed embedding as a 2-D strided view, which the matmul reads in
    /// place (a 3-D view would be copied).
    pub fn project(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => crate::lora::linear_forward(head, hidden),
            None => {
                let [batch, len, d] = hidden.dims();
                let embedding = self.embed_tokens.weight.val();
                let vocab = embedding.dims()[0];
                let hidden = hidden.reshape([batch * len, d]);
                crate::row_matmul::matmul_weight(hidden, embedding.transpose())
                    .reshape([batch, len, vocab])
            }
        }
    }

    /// An empty KV cache for rows with the given left padding.
    pub fn new_cache(&self, padding: Vec<usize>) -> KvCache<B> {
        KvCache::new(self.layers.len(), padding)
    }

    /// Attaches fresh LoRA adapters to the configured layers and freezes every other parameter.
    pub fn with_lora(self, lora: &LoraConfig) -> Self {
        let mut model = self.no_grad();
        for block in &mut model.layers {
            for (target, linear) in block.linears_mut() {
                if lora.targets.contains(&target) {
                    let plain = LoraLinear::new(linear.base.clone());
                    *linear = plain.attach(lora.rank, lora.alpha);
                }
            }
        }
        model
    }

    /// The same model with its adapters switched on or off; off, it computes the base model.
    /// Parameters are shared, not copied.
    pub fn with_adapters_enabled(&self, enabled: bool) -> Self {
        let mut model = self.clone();
        for block in &mut model.layers {
            for (_, linear) in block.linears_mut() {
                linear.set_enabled(enabled);
            }
        }
        model
    }

    /// Whether any linear layer carries a LoRA adapter.
    pub fn has_adapters(&self) -> bool {
        self.layers.iter().any(|block| {
            let (attn, mlp) = (&block.self_attn, &block.mlp);
            [
                &attn.q_proj,
                &attn.k_proj,
                &attn.v_proj,
                &attn.o_proj,
                &mlp.gate_proj,
                &mlp.up_proj,
                &mlp.down_proj,
            ]
            .iter()
            .any(|linear| linear.lora.is_some())
        })
    }

    /// Folds every enabled adapter into its base weight (`W ← W + (α/r)·A·B`).
    pub fn merge_adapters(mut self) -> Self {
        for block in &mut self.layers {
            for (_, linear) in block.linears_mut() {
                let taken = std::mem::replace(linear, LoraLinear::new(linear.base.clone()));
                *linear = taken.merge();
            }
        }
        self
    }
}

impl<B: Backend> Llama<B> {
    /// A model of `config` with random weights drawn from `seed`, for tests and experiments:
    /// matrices `U(−0.05, 0.05)`, embedding `U(−0.25, 0.25)` (logits spread over a few nats),
    /// norm gains `1 + U(−0.05, 0.05)`. The weights depend on the seed only (not on the
    /// backend's global RNG), so parallel tests get the same model.
    pub fn init(config: &LlamaConfig, seed: u64, device: &B::Device) -> Self {
        use rand::{Rng, SeedableRng};
        let b = Builder { config };
        let rng = std::cell::RefCell::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let values = |n: usize, scale: f32, around: f32| -> Vec<f32> {
            let mut rng = rng.borrow_mut();
            (0..n)
                .map(|_| around + scale * (2.0 * rng.random::<f32>() - 1.0))
                .collect()
        };
        let uniform = |[rows, cols]: [usize; 2]| {
            Tensor::from_data(
                TensorData::new(values(rows * cols, 0.05, 0.0), [rows, cols]),
                device,
            )
        };
        let vector = |n: usize, around: f32| {
            Tensor::from_data(TensorData::new(values(n, 0.05, around), [n]), device)
        };
        let linear = |out: usize, inp: usize, bias: bool| {
            b.linear(uniform([out, inp]), bias.then(|| vector(out, 0.0)))
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
        let bias = config.attention_bias;
        let layers = (0..config.num_hidden_layers)
            .map(|_| Block {
                input_layernorm: b.norm(vector(d, 1.0)),
                self_attn: b.attention(
                    [
                        linear(q_out, d, bias),
                        linear(kv_out, d, bias),
                        linear(kv_out, d, bias),
                        linear(d, q_out, config.output_bias()),
                    ],
                    config
                        .qk_norm
                        .then(|| [b.norm(vector(hd, 1.0)), b.norm(vector(hd, 1.0))]),
                ),
                post_attention_layernorm: b.norm(vector(d, 1.0)),
                mlp: b.mlp([
                    linear(ff, d, false),
                    linear(ff, d, false),
                    linear(d, ff, false),
                ]),
            })
            .collect();
        let lm_head = (!config.tie_word_embeddings).then(|| linear(config.vocab_size, d, false));
        b.model(
            uniform([config.vocab_size, d]).mul_scalar(5.0),
            layers,
            b.norm(vector(d, 1.0)),
            lm_head,
        )
    }
}

/// Builds a model from weights in Hugging Face layout (`[out, in]` matrices).
pub(crate) struct Builder<'a> {
    pub config: &'a LlamaConfig,
}

impl Builder<'_> {
    /// A linear layer from an `[out, in]` matrix and an optional bias. The `[in, out]` weight
    /// burn expects is kept as a transposed view of the `[out, in]` matrix, the layout
    /// [`crate::row_matmul::matmul_weight`] reads in place.
    pub fn linear<B: Backend>(
        &self,
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) -> Linear<B> {
        Linear {
            weight: burn::module::Param::from_tensor(weight.transpose()),
            bias: bias.map(burn::module::Param::from_tensor),
        }
    }

    /// An RMSNorm with the config's epsilon.
    pub fn norm<B: Backend>(&self, gamma: Tensor<B, 1>) -> RmsNorm<B> {
        RmsNorm {
            gamma: burn::module::Param::from_tensor(gamma),
            epsilon: self.config.rms_norm_eps,
        }
    }

    /// An attention layer from its `[q, k, v, o]` projections and optional q/k norms.
    pub fn attention<B: Backend>(
        &self,
        [q, k, v, o]: [Linear<B>; 4],
        qk_norm: Option<[RmsNorm<B>; 2]>,
    ) -> Attention<B> {
        let (q_norm, k_norm) = match qk_norm {
            Some([q, k]) => (Some(q), Some(k)),
            None => (None, None),
        };
        Attention {
            q_proj: LoraLinear::new(q),
            k_proj: LoraLinear::new(k),
            v_proj: LoraLinear::new(v),
            o_proj: LoraLinear::new(o),
            q_norm,
            k_norm,
            heads: self.config.num_attention_heads,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// The SwiGLU MLP from its `[gate, up, down]` projections.
    pub fn mlp<B: Backend>(&self, [gate, up, down]: [Linear<B>; 3]) -> Mlp<B> {
        Mlp {
            gate_proj: LoraLinear::new(gate),
            up_proj: LoraLinear::new(up),
            down_proj: LoraLinear::new(down),
        }
    }

    /// The whole model.
    pub fn model<B: Backend>(
        &self,
        embedding: Tensor<B, 2>,
        layers: Vec<Block<B>>,
        norm: RmsNorm<B>,
        lm_head: Option<Linear<B>>,
    ) -> Llama<B> {
        Llama {
            embed_tokens: Embedding {
                weight: burn::module::Param::from_tensor(embedding),
            },
            layers,
            norm,
            lm_head,
            config: self.config.clone(),
            inv_freq: crate::rope::inverse_frequencies(self.config),
        }
    }
}
