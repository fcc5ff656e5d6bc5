//! Model configuration of the Llama family (Llama 2/3, SmolLM2, Qwen2, Qwen3), read from a
//! Hugging Face `config.json` or from GGUF metadata.

use std::path::Path;

use serde::Deserialize;

use crate::error::{PolicyError, Result};
use crate::gguf::{GgufFile, Value};

/// Llama-3 RoPE frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    /// Context extension factor.
    pub factor: f64,
    /// Wavelengths below `original / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f64,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// Which member of the Llama family: decides biases, q/k norms and the names used on save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2, Mistral-style decoders (`model_type = "llama"`).
    Llama,
    /// Qwen2: biases on q, k, v.
    Qwen2,
    /// Qwen3: RMSNorm on queries and keys per head.
    Qwen3,
}

impl Architecture {
    /// The Hugging Face `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// The Hugging Face model class.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// The architecture of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Which member of the family.
    pub architecture: Architecture,
    /// Vocabulary size `V`.
    pub vocab_size: usize,
    /// Residual width `d`.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head (`hidden_size / num_attention_heads` unless the config says otherwise).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base `θ`.
    pub rope_theta: f64,
    /// Llama-3 RoPE scaling, when the model uses it.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Whether the output projection is the token embedding.
    pub tie_word_embeddings: bool,
    /// Biases on the q, k, v projections (Qwen2; Llama and Qwen3 with `attention_bias`, which
    /// also puts one on the output projection).
    pub attention_bias: bool,
    /// RMSNorm on queries and keys per head (Qwen3).
    pub qk_norm: bool,
}

/// The subset of a Hugging Face `config.json` that the model needs.
#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    mlp_bias: Option<bool>,
    use_sliding_window: Option<bool>,
}

impl LlamaConfig {
    /// A tiny Llama over `vocab_size` tokens for tests, examples and toy tasks: 2 layers,
    /// width 48 (4 query heads and 2 key/value heads of 12), SwiGLU width 96, tied embedding,
    /// RoPE θ 10 000, 64 positions.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            architecture: Architecture::Llama,
            vocab_size,
            hidden_size: 48,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 12,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
        }
    }

    /// Whether the attention's output projection has a bias: with `attention_bias`, except on
    /// Qwen2 (whose biases are on q, k and v only), as in `transformers`.
    pub fn output_bias(&self) -> bool {
        self.attention_bias && self.architecture != Architecture::Qwen2
    }

    /// Reads a Hugging Face `config.json` (`model_type` llama, qwen2 or qwen3).
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf_json(path, &text)
    }

    /// Parses the text of a Hugging Face `config.json`; `path` names it in errors.
    pub fn from_hf_json(path: impl AsRef<Path>, text: &str) -> Result<Self> {
        let path = path.as_ref();
        let invalid = |detail: String| PolicyError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| invalid(format!("config.json line {}: {e}", e.line())))?;
        let model_type = hf
            .model_type
            .clone()
            .or_else(|| hf.architectures.as_ref().and_then(|a| a.first().cloned()))
            .unwrap_or_default()
            .to_lowercase();
        let (architecture, attention_bias, qk_norm) = match model_type.as_str() {
            "llama" | "llamaforcausallm" | "mistral" => (
                Architecture::Llama,
                hf.attention_bias.unwrap_or(false),
                false,
            ),
            "qwen2" | "qwen2forcausallm" => (Architecture::Qwen2, true, false),
            "qwen3" | "qwen3forcausallm" => (
                Architecture::Qwen3,
                hf.attention_bias.unwrap_or(false),
                true,
            ),
            other => {
                return Err(PolicyError::Unsupported {
                    path: path.to_path_buf(),
                    detail: format!("architecture `{other}` (opd reads llama, qwen2 and qwen3)"),
                });
            }
        };
        // Fields that change the computation and that this model does not implement.
        let unsupported = |detail: String| PolicyError::Unsupported {
            path: path.to_path_buf(),
            detail,
        };
        if let Some(act) = hf
            .hidden_act
            .as_deref()
            .filter(|a| !matches!(*a, "silu" | "swish"))
        {
            return Err(unsupported(format!(
                "hidden_act `{act}` (opd's MLP is SwiGLU: silu)"
            )));
        }
        if hf.mlp_bias == Some(true) {
            return Err(unsupported(
                "mlp_bias = true (opd's MLP has no biases)".into(),
            ));
        }
        if hf.use_sliding_window == Some(true) {
            return Err(unsupported(
                "use_sliding_window = true (opd's attention is full causal)".into(),
            ));
        }
        let rope_scaling = match hf.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v)
                if v.get("rope_type")
                    .or(v.get("type"))
                    .and_then(|t| t.as_str())
                    == Some("llama3") =>
            {
                Some(serde_json::from_value(v).map_err(|e| invalid(format!("rope_scaling: {e}")))?)
            }
            Some(v) => {
                return Err(unsupported(format!(
                    "rope_scaling {v} (opd supports llama3 scaling)"
                )));
            }
        };
        Self {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            attention_bias,
            qk_norm,
        }
        .validated(path)
    }

    /// Reads the configuration from GGUF metadata (`general.architecture` llama, qwen2, qwen3).
    /// Tied embeddings are inferred from the absence of an `output.weight` tensor.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file
            .get("general.architecture")?
            .as_str()
            .ok_or_else(|| missing(file, "general.architecture"))?
            .to_string();
        let (architecture, attention_bias, qk_norm) = match arch.as_str() {
            // llama.cpp's llama and qwen3 graphs take attention biases when the file has them.
            "llama" => (
                Architecture::Llama,
                file.tensor("blk.0.attn_q.bias").is_some(),
                false,
            ),
            "qwen2" => (Architecture::Qwen2, true, false),
            "qwen3" => (
                Architecture::Qwen3,
                file.tensor("blk.0.attn_q.bias").is_some(),
                true,
            ),
            other => {
                return Err(PolicyError::Unsupported {
                    path: file.path.clone(),
                    detail: format!("architecture `{other}` (opd reads llama, qwen2 and qwen3)"),
                });
            }
        };
        let uint = |key: &str| -> Result<usize> {
            let full = format!("{arch}.{key}");
            file.get(&full)?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| missing(file, &full))
        };
        let float = |key: &str, default: f64| -> Result<f64> {
            let full = format!("{arch}.{key}");
            match file.metadata.get(&full) {
                None => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| missing(file, &full)),
            }
        };
        let heads = uint("attention.head_count")?;
        let hidden = uint("embedding_length")?;
        let vocab = match file.metadata.get(&format!("{arch}.vocab_size")) {
            Some(v) => v.as_u64().ok_or_else(|| missing(file, "vocab_size"))? as usize,
            None => file
                .get("tokenizer.ggml.tokens")?
                .as_array()
                .map(<[Value]>::len)
                .ok_or_else(|| missing(file, "tokenizer.ggml.tokens"))?,
        };
        Self {
            architecture,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: uint("feed_forward_length")?,
            num_hidden_layers: uint("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: uint("attention.head_count_kv").unwrap_or(heads),
            head_dim: uint("attention.key_length").unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6)?,
            rope_theta: float("rope.freq_base", 10_000.0)?,
            rope_scaling: None,
            max_position_embeddings: uint("context_length")?,
            tie_word_embeddings: file.tensor("output.weight").is_none(),
            attention_bias,
            qk_norm,
        }
        .validated(&file.path)
    }

    /// Checks the sizes are positive and consistent, and the RMS epsilon and RoPE base finite
    /// and positive.
    fn validated(self, path: &Path) -> Result<Self> {
        let bad = |field: &str, why: &str| PolicyError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("config field `{field}` {why}"),
        };
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return Err(bad(field, "is 0"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                "does not divide num_attention_heads",
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad("head_dim", "is odd (RoPE rotates pairs)"));
        }
        for (field, value) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(bad(
                    field,
                    &format!("is {value}; expected a finite number > 0"),
                ));
            }
        }
        Ok(self)
    }
}

fn missing(file: &GgufFile, field: &str) -> PolicyError {
    PolicyError::MissingField {
        path: file.path.clone(),
        field: field.to_string(),
    }
}

impl LlamaConfig {
    /// The Hugging Face `config.json` of this architecture (what `transformers` loads).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let rope_scaling = self.rope_scaling.map(|s| {
            serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "high_freq_factor": s.high_freq_factor,
                "low_freq_factor": s.low_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })
        });
        serde_json::json!({
            "architectures": [self.architecture.class_name()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "torch_dtype": "float32",
        })
    }
}
