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

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{Int, Tensor, backend::Backend};

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::frozen::FrozenPrecision;
use crate::kv_cache::{KvCache, SlotLayout};
use crate::lora::{LoraConfig, LoraLinear, LoraTarget};
use crate::rope::RopeTables;
use crate::weights::{RandomSource, WeightSource, Weights};

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
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(swiglu(gate, self.up_proj.forward(x)))
    }
}

/// `silu(gate) ⊙ up`: on `Autodiff<Flex>` one graph node with a closed-form backward
/// (`swiglu_grad.rs`), elsewhere burn's ops.
fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    return crate::swiglu_grad::swiglu(gate, up);
    #[cfg(not(feature = "flex"))]
    {
        burn::tensor::activation::silu(gate) * up
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

    /// The seven projections with their names, in [`LoraTarget::ALL`]'s order.
    pub(crate) fn projections(&self) -> [(LoraTarget, &LoraLinear<B>); 7] {
        let (attn, mlp) = (&self.self_attn, &self.mlp);
        [
            (LoraTarget::QProj, &attn.q_proj),
            (LoraTarget::KProj, &attn.k_proj),
            (LoraTarget::VProj, &attn.v_proj),
            (LoraTarget::OProj, &attn.o_proj),
            (LoraTarget::GateProj, &mlp.gate_proj),
            (LoraTarget::UpProj, &mlp.up_proj),
            (LoraTarget::DownProj, &mlp.down_proj),
        ]
    }

    fn projections_mut(&mut self) -> [(LoraTarget, &mut LoraLinear<B>); 7] {
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

    /// The output head as a `[V, d]` matrix `W` with `project(h) = h·Wᵀ`: the tied embedding,
    /// or `lm_head`'s weight transposed (a view); `None` when `lm_head` has a bias. A loss that
    /// fuses the head (`opd_divergences::sampled::sequence_log_probs_from_hidden`) reads it.
    pub fn output_head(&self) -> Option<Tensor<B, 2>> {
        match &self.lm_head {
            Some(head) if head.bias.is_some() => None,
            Some(head) => Some(head.weight.val().transpose()),
            None => Some(self.embed_tokens.weight.val()),
        }
    }

    /// An empty KV cache for rows with the given left padding.
    pub fn new_cache(&self, padding: Vec<usize>) -> KvCache<B> {
        KvCache::new(self.layers.len(), padding)
    }

    /// Attaches fresh LoRA adapters to the configured layers and freezes every other parameter.
    pub fn with_lora(self, lora: &LoraConfig) -> Self {
        let mut model = self.no_grad();
        for (layer, block) in model.layers.iter_mut().enumerate() {
            for (index, (target, linear)) in block.projections_mut().into_iter().enumerate() {
                if lora.targets.contains(&target) {
                    let plain = LoraLinear::new(linear.base.clone());
                    // One stream per (seed, layer, target).
                    let stream = lora.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ ((layer as u64) << 8 | index as u64);
                    *linear = plain.attach(lora.rank, lora.alpha, stream);
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
            for (_, linear) in block.projections_mut() {
                linear.set_enabled(enabled);
            }
        }
        model
    }

    /// Whether any linear layer carries a LoRA adapter.
    pub fn has_adapters(&self) -> bool {
        self.layers.iter().any(|block| {
            block
                .projections()
                .iter()
                .any(|(_, linear)| linear.lora.is_some())
        })
    }

    /// Folds every enabled adapter into its base weight (`W ← W + (α/r)·A·B`).
    pub fn merge_adapters(mut self) -> Self {
        for block in &mut self.layers {
            for (_, linear) in block.projections_mut() {
                let taken = std::mem::replace(linear, LoraLinear::new(linear.base.clone()));
                *linear = taken.merge();
            }
        }
        self
    }

    /// The same model with the base weights of its linear layers kept in `precision` and
    /// frozen: for a LoRA student (whose bases do not train) or a teacher. The embedding, the
    /// tied output head and the norms stay f32; layers already in `precision` are left as they
    /// are (so `F32` changes nothing in an f32 model).
    pub fn with_frozen_precision(mut self, precision: FrozenPrecision) -> Self {
        for block in &mut self.layers {
            for (_, linear) in block.projections_mut() {
                let taken = std::mem::replace(linear, LoraLinear::new(linear.base.clone()));
                *linear = taken.with_frozen_precision(precision);
            }
        }
        self
    }
}

impl<B: Backend> Llama<B> {
    /// Builds the model of `config` from `source`, checking every tensor's shape.
    pub(crate) fn from_source(
        config: &LlamaConfig,
        source: &dyn WeightSource,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load(&Weights::new(source, config, device))
    }
}

impl<B: Backend> Llama<B> {
    /// A model of `config` with random weights drawn from `seed`, for tests and experiments:
    /// matrices `U(−0.05, 0.05)`, embedding `U(−0.25, 0.25)` (logits spread over a few nats),
    /// norm gains `1 + U(−0.05, 0.05)`. The weights depend on the seed only (not on the
    /// backend's global RNG), so parallel tests get the same model.
    pub fn init(config: &LlamaConfig, seed: u64, device: &B::Device) -> Self {
        Self::from_source(config, &RandomSource::new(seed), device)
            .expect("a random source holds every tensor the config asks for")
    }

    /// The model from `w` (its Hugging Face names: `model.layers.0.…`, `lm_head`).
    pub(crate) fn load(w: &Weights<'_, B>) -> Result<Self> {
        let config = w.config;
        let (v, d) = (config.vocab_size, config.hidden_size);
        let model = w.pp("model");
        let layers = (0..config.num_hidden_layers)
            .map(|l| Block::load(&model.pp(&format!("layers.{l}"))))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match config.tie_word_embeddings {
            true => None,
            false => Some(w.linear("lm_head", [v, d], false)?),
        };
        Ok(Self {
            embed_tokens: Embedding {
                weight: Param::from_tensor(model.pp("embed_tokens").tensor("weight", [v, d])?),
            },
            layers,
            norm: model.norm("norm", d)?,
            lm_head,
            config: config.clone(),
            inv_freq: crate::rope::inverse_frequencies(config),
        })
    }
}

impl<B: Backend> Block<B> {
    /// A decoder block from `w` (`input_layernorm`, `self_attn`, `post_attention_layernorm`,
    /// `mlp`).
    fn load(w: &Weights<'_, B>) -> Result<Self> {
        let d = w.config.hidden_size;
        Ok(Self {
            input_layernorm: w.norm("input_layernorm", d)?,
            self_attn: Attention::load(w)?,
            post_attention_layernorm: w.norm("post_attention_layernorm", d)?,
            mlp: Mlp::load(w)?,
        })
    }
}

/// A block's projection `target` from `w`, named as [`LoraTarget::module`] says.
fn projection<B: Backend>(w: &Weights<'_, B>, target: LoraTarget) -> Result<LoraLinear<B>> {
    let config = w.config;
    let linear = w.linear(
        target.module(),
        target.shape(config),
        target.has_bias(config),
    )?;
    Ok(LoraLinear::new(linear))
}

impl<B: Backend> Attention<B> {
    /// The projections `self_attn.{q,k,v,o}_proj` and, for Qwen3, the q/k norms, from the
    /// block's `w`.
    fn load(w: &Weights<'_, B>) -> Result<Self> {
        let config = w.config;
        let hd = config.head_dim;
        let [q_proj, k_proj, v_proj, o_proj] = [
            LoraTarget::QProj,
            LoraTarget::KProj,
            LoraTarget::VProj,
            LoraTarget::OProj,
        ]
        .map(|target| projection(w, target));
        let attn = w.pp("self_attn");
        let (q_norm, k_norm) = match config.qk_norm {
            true => (
                Some(attn.norm("q_norm", hd)?),
                Some(attn.norm("k_norm", hd)?),
            ),
            false => (None, None),
        };
        Ok(Self {
            q_proj: q_proj?,
            k_proj: k_proj?,
            v_proj: v_proj?,
            o_proj: o_proj?,
            q_norm,
            k_norm,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: hd,
        })
    }
}

impl<B: Backend> Mlp<B> {
    /// The projections `mlp.{gate,up,down}_proj` from the block's `w`.
    fn load(w: &Weights<'_, B>) -> Result<Self> {
        Ok(Self {
            gate_proj: projection(w, LoraTarget::GateProj)?,
            up_proj: projection(w, LoraTarget::UpProj)?,
            down_proj: projection(w, LoraTarget::DownProj)?,
        })
    }
}
