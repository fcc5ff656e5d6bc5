//! LoRA adapters (Hu et al., 2021) on the model's linear layers.
//!
//! ```text
//! y = x·W + b + (α/r)·(x·A)·B        A: [in, r] ~ U(−1/√in, 1/√in),  B: [r, out] = 0
//! ```
//!
//! `B = 0` makes a fresh adapter the identity. Switched off, the adapted model is the base
//! model (a frozen teacher for free); merged, `W ← W + (α/r)·A·B` and the adapter is dropped.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::config::LlamaConfig;
use crate::frozen::FrozenPrecision;

/// The linear layers of a decoder block that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// Query projection.
    QProj,
    /// Key projection.
    KProj,
    /// Value projection.
    VProj,
    /// Attention output projection.
    OProj,
    /// MLP gate projection.
    GateProj,
    /// MLP up projection.
    UpProj,
    /// MLP down projection.
    DownProj,
}

impl LoraTarget {
    /// Every target: attention and MLP.
    pub const ALL: [LoraTarget; 7] = [
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    /// The projection's module path in a decoder block, as Hugging Face names it
    /// (`self_attn.q_proj`); its tensors are `….weight` and `….bias`.
    pub fn module(self) -> &'static str {
        match self {
            Self::QProj => "self_attn.q_proj",
            Self::KProj => "self_attn.k_proj",
            Self::VProj => "self_attn.v_proj",
            Self::OProj => "self_attn.o_proj",
            Self::GateProj => "mlp.gate_proj",
            Self::UpProj => "mlp.up_proj",
            Self::DownProj => "mlp.down_proj",
        }
    }

    /// The same module as llama.cpp's GGUF files name it (`attn_q`).
    pub fn gguf_module(self) -> &'static str {
        match self {
            Self::QProj => "attn_q",
            Self::KProj => "attn_k",
            Self::VProj => "attn_v",
            Self::OProj => "attn_output",
            Self::GateProj => "ffn_gate",
            Self::UpProj => "ffn_up",
            Self::DownProj => "ffn_down",
        }
    }

    /// The `[out, in]` shape of its weight in `config`: `H·hd`, `KV·hd`, `d` and `ff` sized.
    pub fn shape(self, config: &LlamaConfig) -> [usize; 2] {
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        let q = config.num_attention_heads * config.head_dim;
        let kv = config.num_key_value_heads * config.head_dim;
        match self {
            Self::QProj => [q, d],
            Self::KProj | Self::VProj => [kv, d],
            Self::OProj => [d, q],
            Self::GateProj | Self::UpProj => [ff, d],
            Self::DownProj => [d, ff],
        }
    }

    /// Whether it has a bias in `config` (q/k/v with `attention_bias`; o when the
    /// architecture's output projection has one too).
    pub fn has_bias(self, config: &LlamaConfig) -> bool {
        match self {
            Self::QProj | Self::KProj | Self::VProj => config.attention_bias,
            Self::OProj => config.output_bias(),
            Self::GateProj | Self::UpProj | Self::DownProj => false,
        }
    }
}

/// Rank, scale and placement of LoRA adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: usize,
    /// Scale numerator `α`; the update is scaled by `α/r`.
    pub alpha: f64,
    /// Layers that get an adapter.
    pub targets: Vec<LoraTarget>,
    /// Seed of the adapters' `A` matrices: each is drawn uniform in `±1/√fan_in` from a
    /// stream keyed by `(seed, layer, target)`, so every process (every worker of a
    /// data-parallel run, a rerun) attaches the same adapters.
    #[serde(default)]
    pub seed: u64,
}

/// One low-rank update `(α/r)·A·B`.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// Down projection `[in, r]`.
    pub a: Param<Tensor<B, 2>>,
    /// Up projection `[r, out]`, zero at initialization.
    pub b: Param<Tensor<B, 2>>,
    /// `α/r`.
    #[module(skip)]
    pub scale: f64,
    /// Whether the update is applied.
    #[module(skip)]
    pub enabled: bool,
}

/// A linear layer with an optional LoRA adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The base layer (weight `[in, out]`).
    pub base: Linear<B>,
    /// The adapter, when attached.
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> LoraLinear<B> {
    /// A layer without adapter.
    pub fn new(base: Linear<B>) -> Self {
        Self { base, lora: None }
    }

    /// `x·W + b`, plus `(α/r)·(x·A)·B` when an enabled adapter is attached.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = linear_forward(&self.base, x.clone());
        match &self.lora {
            Some(lora) if lora.enabled => {
                let update = x
                    .matmul(lora.a.val().unsqueeze())
                    .matmul(lora.b.val().unsqueeze());
                y + update.mul_scalar(lora.scale)
            }
            _ => y,
        }
    }

    /// Attaches a fresh adapter of rank `r` (`A` uniform in `±1/√fan_in`, drawn from the random
    /// stream `stream`; `B` zero); the base is frozen.
    pub fn attach(self, rank: usize, alpha: f64, stream: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let [fan_in, fan_out] = self.base.weight.dims();
        let device = self.base.weight.device();
        let bound = 1.0 / (fan_in as f32).sqrt();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream);
        let a: Vec<f32> = (0..fan_in * rank)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Self {
            base: self.base.no_grad(),
            lora: Some(Lora {
                a: Param::from_tensor(Tensor::from_data(
                    TensorData::new(a, [fan_in, rank]),
                    &device,
                )),
                b: Param::from_tensor(Tensor::zeros([rank, fan_out], &device)),
                scale: alpha / rank as f64,
                enabled: true,
            }),
        }
    }

    /// The same layer with its base weight kept in `precision` and frozen (the base of a LoRA
    /// layer, or any layer of a teacher), a new leaf without a graph; a layer whose weight is
    /// already in `precision` is returned as it is.
    pub fn with_frozen_precision(self, precision: FrozenPrecision) -> Self {
        if self.base.weight.val().dtype() == precision.dtype() {
            return self;
        }
        let weight = crate::frozen::convert(self.base.weight.val(), precision).detach();
        let base = Linear {
            weight: Param::from_tensor(weight),
            bias: self.base.bias,
        };
        Self {
            base: base.no_grad(),
            lora: self.lora,
        }
    }

    /// Switches the adapter on or off (no effect without one).
    pub fn set_enabled(&mut self, enabled: bool) {
        if let Some(lora) = &mut self.lora {
            lora.enabled = enabled;
        }
    }

    /// Folds the adapter into the base weight, `W ← W + (α/r)·A·B`, and drops it. A disabled
    /// adapter is dropped without folding. The merged weight is a new leaf (detached from any
    /// autodiff graph), so a model being trained can be merged and saved.
    pub fn merge(self) -> Self {
        match self.lora {
            Some(lora) if lora.enabled => {
                let delta = lora.a.val().matmul(lora.b.val()).mul_scalar(lora.scale);
                let base = crate::frozen::convert(self.base.weight.val(), FrozenPrecision::F32);
                let weight = (base + delta).detach();
                Self::new(Linear {
                    weight: Param::from_tensor(weight),
                    bias: self.base.bias,
                })
            }
            _ => Self::new(self.base),
        }
    }
}

/// `x·W + b` over the last dimension of `x`, as one 2-D product over all leading dimensions
/// ([`crate::row_matmul::matmul_weight`]), which reads a transposed weight in place; burn's
/// `Linear::forward` would broadcast it into a batched product and copy it on every call.
pub fn linear_forward<B: Backend, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let weight = linear.weight.val();
    let [fan_in, fan_out] = weight.dims();
    let mut y = crate::row_matmul::matmul_weight(x.reshape([-1, fan_in as i32]), weight);
    if let Some(bias) = &linear.bias {
        y = y + bias.val().unsqueeze();
    }
    dims[D - 1] = fan_out;
    y.reshape(dims)
}
