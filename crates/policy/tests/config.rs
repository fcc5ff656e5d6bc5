//! Model configuration from Hugging Face `config.json` and from GGUF metadata.

mod common;

use opd_policy::{Architecture, LlamaConfig, PolicyError};

#[test]
fn smollm2_config_from_gguf() {
    let config = LlamaConfig::from_gguf(&common::smollm2()).unwrap();
    assert_eq!(
        config,
        LlamaConfig {
            architecture: Architecture::Llama,
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 9.999999747378752e-6,
            rope_theta: 100_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
        }
    );
}

const LLAMA3: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
  "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
  "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": true,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}
}"#;

#[test]
fn hugging_face_configs_of_each_family() {
    let llama = LlamaConfig::from_hf_json("config.json", LLAMA3).unwrap();
    assert_eq!((llama.head_dim, llama.num_key_value_heads), (64, 8));
    assert_eq!(llama.rope_scaling.unwrap().factor, 32.0);
    assert!(!llama.attention_bias && !llama.qk_norm && llama.tie_word_embeddings);

    let qwen2 = LLAMA3
        .replace("\"llama\"", "\"qwen2\"")
        .replace("\"rope_scaling\"", "\"unused\"");
    let qwen2 = LlamaConfig::from_hf_json("config.json", &qwen2).unwrap();
    assert!(qwen2.attention_bias && !qwen2.qk_norm && qwen2.rope_scaling.is_none());

    let qwen3 = LLAMA3
        .replace("\"llama\"", "\"qwen3\"")
        .replace("\"rope_scaling\"", "\"head_dim\": 128, \"unused\"");
    let qwen3 = LlamaConfig::from_hf_json("config.json", &qwen3).unwrap();
    assert!(qwen3.qk_norm && !qwen3.attention_bias);
    assert_eq!(qwen3.head_dim, 128);
}

#[test]
fn bad_configs_name_the_file_and_field() {
    let unknown = LLAMA3.replace("\"llama\"", "\"gpt2\"");
    let err = LlamaConfig::from_hf_json("m/config.json", &unknown).unwrap_err();
    assert!(
        matches!(err, PolicyError::Unsupported { .. }) && err.to_string().contains("gpt2"),
        "{err}"
    );

    let missing = LLAMA3.replace("\"hidden_size\": 2048,", "");
    let err = LlamaConfig::from_hf_json("m/config.json", &missing).unwrap_err();
    assert!(
        err.to_string().contains("m/config.json") && err.to_string().contains("hidden_size"),
        "{err}"
    );

    let uneven = LLAMA3.replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5");
    let err = LlamaConfig::from_hf_json("m/config.json", &uneven).unwrap_err();
    assert!(err.to_string().contains("num_key_value_heads"), "{err}");

    // Fields that change the computation opd would silently do differently.
    for (field, value) in [
        ("hidden_act", "\"gelu\""),
        ("mlp_bias", "true"),
        ("use_sliding_window", "true"),
    ] {
        let text = LLAMA3.replacen('{', &format!("{{\"{field}\": {value},"), 1);
        let err = LlamaConfig::from_hf_json("m/config.json", &text).unwrap_err();
        assert!(
            matches!(err, PolicyError::Unsupported { .. }) && err.to_string().contains(field),
            "{err}"
        );
    }
    let silu = LLAMA3.replacen('{', "{\"hidden_act\": \"silu\", \"mlp_bias\": false,", 1);
    assert!(LlamaConfig::from_hf_json("m/config.json", &silu).is_ok());

    let scaling = LLAMA3.replace("\"llama3\"", "\"yarn\"");
    assert!(matches!(
        LlamaConfig::from_hf_json("c", &scaling),
        Err(PolicyError::Unsupported { .. })
    ));
    assert!(matches!(
        LlamaConfig::from_hf_file("no/such/config.json"),
        Err(PolicyError::Io { .. })
    ));
}
