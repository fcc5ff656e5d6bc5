//! Where the tests find SmolLM2.

use opd_policy::gguf::GgufFile;

#[allow(dead_code)]
#[path = "../../../../tests/support/smollm2.rs"]
mod smollm2;
pub use smollm2::smollm2_path;

/// SmolLM2-135M-Instruct, parsed.
#[allow(dead_code)]
pub fn smollm2() -> GgufFile {
    GgufFile::open(smollm2_path()).expect("SmolLM2 parses")
}

/// A tiny configuration of each variant: Llama (tied or not, optionally Llama-3 rope
/// scaling), Qwen2 (q/k/v biases), Qwen3 (q/k norms).
#[allow(dead_code)]
pub fn tiny(architecture: opd_policy::Architecture, tied: bool) -> opd_policy::LlamaConfig {
    use opd_policy::Architecture;
    opd_policy::LlamaConfig {
        architecture,
        vocab_size: 61,
        hidden_size: 24,
        intermediate_size: 40,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: (architecture == Architecture::Llama && !tied).then_some(
            opd_policy::Llama3RopeScaling {
                factor: 8.0,
                high_freq_factor: 4.0,
                low_freq_factor: 1.0,
                original_max_position_embeddings: 16,
            },
        ),
        max_position_embeddings: 128,
        tie_word_embeddings: tied,
        attention_bias: architecture == Architecture::Qwen2,
        qk_norm: architecture == Architecture::Qwen3,
    }
}

/// Every tiny variant.
#[allow(dead_code)]
pub fn tiny_variants() -> Vec<opd_policy::LlamaConfig> {
    use opd_policy::Architecture::*;
    vec![
        tiny(Llama, true),
        tiny(Llama, false),
        tiny(Qwen2, false),
        tiny(Qwen3, true),
    ]
}

/// Largest absolute difference of two tensors.
#[allow(dead_code)]
pub fn max_diff<B: burn::tensor::backend::Backend, const D: usize>(
    a: burn::tensor::Tensor<B, D>,
    b: burn::tensor::Tensor<B, D>,
) -> f32 {
    (a - b).abs().max().into_scalar().elem()
}

use burn::tensor::ElementConversion;
