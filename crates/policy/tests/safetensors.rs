//! Hugging Face safetensors: tiny random models of every variant round-trip; shards, bf16 and
//! f16 load; bad files give typed errors naming the file and tensor; the reader survives
//! truncated and mutated bytes.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use opd_policy::{Llama, Policy, PolicyError, SaveDtype};
use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

type B = Flex;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("opd-st-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn probe() -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(vec![1i64, 5, 9, 33, 2, 60], [1, 6]),
        &Default::default(),
    )
}

fn saved_tiny(name: &str, seed: u64) -> (PathBuf, Llama<B>) {
    let config = common::tiny(opd_policy::Architecture::Qwen2, false);
    let model = Llama::<B>::init(&config, seed, &Default::default());
    let dir = scratch(name);
    model.save_hf(&dir, SaveDtype::F32).unwrap();
    (dir, model)
}

/// Rewrites `dir/model.safetensors` with `edit` applied to the tensor map.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn every_tiny_variant_round_trips_exactly() {
    for (i, config) in common::tiny_variants().into_iter().enumerate() {
        let model = Llama::<B>::init(&config, i as u64, &Default::default());
        let dir = scratch(&format!("variant{i}"));
        model.save_hf(&dir, SaveDtype::F32).unwrap();
        let loaded = Llama::<B>::from_hf_folder(&dir, &Default::default()).unwrap();
        assert_eq!(loaded.config, config);
        let diff = common::max_diff(model.logits(probe(), &[0]), loaded.logits(probe(), &[0]));
        assert_eq!(diff, 0.0, "{config:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn bf16_and_f16_weights_load_to_f32() {
    let (dir, model) = saved_tiny("half", 1);
    let reference = model.logits(probe(), &[0]);
    let bf16 = scratch("bf16");
    model.save_hf(&bf16, SaveDtype::Bf16).unwrap();
    let loaded = Llama::<B>::from_hf_folder(&bf16, &Default::default()).unwrap();
    let diff = common::max_diff(reference.clone(), loaded.logits(probe(), &[0]));
    assert!(diff > 0.0 && diff < 0.05, "bf16 difference {diff}");
    rewrite(&dir, |tensors| {
        for (_, dtype, _, bytes) in tensors.iter_mut() {
            *bytes = bytes
                .chunks_exact(4)
                .flat_map(|b| {
                    half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
                })
                .collect();
            *dtype = Dtype::F16;
        }
    });
    let loaded = Llama::<B>::from_hf_folder(&dir, &Default::default()).unwrap();
    let diff = common::max_diff(reference, loaded.logits(probe(), &[0]));
    assert!(diff > 0.0 && diff < 0.01, "f16 difference {diff}");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(bf16).unwrap();
}

#[test]
fn sharded_folders_load_through_the_index() {
    let (dir, model) = saved_tiny("shards", 2);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let mut weight_map = HashMap::new();
    for (shard, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        let views: Vec<_> = part
            .iter()
            .map(|n| (n.to_string(), st.tensor(n).unwrap()))
            .collect();
        for n in part {
            weight_map.insert(n.to_string(), file.clone());
        }
        std::fs::write(
            dir.join(&file),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let loaded = Llama::<B>::from_hf_folder(&dir, &Default::default()).unwrap();
    let diff = common::max_diff(model.logits(probe(), &[0]), loaded.logits(probe(), &[0]));
    assert_eq!(diff, 0.0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_folders_give_typed_errors_naming_the_file_and_tensor() {
    let load = |dir: &Path| Llama::<B>::from_hf_folder(dir, &Default::default()).unwrap_err();

    let (dir, _) = saved_tiny("missing", 3);
    rewrite(&dir, |t| t.retain(|(n, ..)| n != "model.norm.weight"));
    let err = load(&dir);
    assert!(
        matches!(&err, PolicyError::MissingTensor { name, .. } if name == "model.norm.weight"),
        "{err}"
    );

    let (dir, _) = saved_tiny("shape", 4);
    rewrite(&dir, |t| {
        let (_, _, shape, bytes) = t
            .iter_mut()
            .find(|(n, ..)| n == "model.layers.1.mlp.up_proj.weight")
            .unwrap();
        *shape = vec![shape[0] / 2, shape[1]];
        bytes.truncate(bytes.len() / 2);
    });
    let err = load(&dir).to_string();
    assert!(
        err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("shape"),
        "{err}"
    );

    let (dir, _) = saved_tiny("dtype", 5);
    rewrite(&dir, |t| t[0].1 = Dtype::I32);
    let err = load(&dir);
    assert!(matches!(err, PolicyError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("I32"), "{err}");

    let (dir, _) = saved_tiny("truncated", 6);
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = load(&dir);
    assert!(matches!(err, PolicyError::Corrupt { .. }), "{err}");
    let (len, text) = (bytes.len(), err.to_string());
    assert!(
        text.contains("model.safetensors")
            && text.contains("truncated: the tensors need bytes")
            && text.contains(&format!(
                "..{len} of the file, but the file has {} bytes",
                len - 3
            )),
        "{text}"
    );
    std::fs::write(&path, &bytes[..20]).unwrap();
    let text = load(&dir).to_string();
    assert!(
        text.contains("truncated: the header needs bytes 8.."),
        "{text}"
    );

    let (dir, _) = saved_tiny("arch", 7);
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"qwen2\"", "\"gpt_neox\"")).unwrap();
    let err = load(&dir).to_string();
    assert!(
        err.contains("gpt_neox") && err.contains("config.json"),
        "{err}"
    );

    let empty = scratch("empty");
    let err = load(&empty).to_string();
    assert!(err.contains("config.json"), "{err}");
    let (good, _) = saved_tiny("good", 8);
    std::fs::copy(good.join("config.json"), empty.join("config.json")).unwrap();
    let err = load(&empty).to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

/// NaN or infinity in a weight, a non-positive RMS epsilon or RoPE base: errors at load that
/// name the tensor or field, never a model that prints garbage.
#[test]
fn non_finite_weights_and_impossible_config_values_are_errors() {
    let load = |dir: &Path| Llama::<B>::from_hf_folder(dir, &Default::default()).unwrap_err();
    for (name, value) in [
        ("model.layers.0.input_layernorm.weight", f32::NAN),
        ("model.layers.1.self_attn.k_proj.weight", f32::INFINITY),
    ] {
        let (dir, _) = saved_tiny("nan", 10);
        rewrite(&dir, |t| {
            let (_, _, _, bytes) = t.iter_mut().find(|(n, ..)| n == name).unwrap();
            bytes[4..8].copy_from_slice(&value.to_le_bytes());
        });
        let err = load(&dir);
        let text = err.to_string();
        assert!(matches!(err, PolicyError::Corrupt { .. }), "{text}");
        assert!(
            text.contains(name) && text.contains("1 non-finite") && text.contains("index 1"),
            "{text}"
        );
    }
    for (field, value) in [("rms_norm_eps", "0.0"), ("rope_theta", "-1.0")] {
        let (dir, _) = saved_tiny("config-values", 11);
        let config = dir.join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        json[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&config, json.to_string()).unwrap();
        let text = load(&dir).to_string();
        assert!(
            text.contains(field) && text.contains("config.json") && text.contains("> 0"),
            "{text}"
        );
    }
}

/// A tokenizer that does not fit the model: an EOS id outside the vocabulary (generation
/// would never stop), or more tokens than the model has logits.
#[test]
fn a_tokenizer_that_does_not_fit_the_model_is_an_error() {
    let tokenizer = opd_policy::ChatTokenizer::from_gguf(&common::smollm2()).unwrap();
    let model_of = |vocab| {
        let mut config = common::tiny(opd_policy::Architecture::Llama, true);
        config.vocab_size = vocab;
        Llama::<B>::init(&config, 12, &Default::default())
    };
    let dir = scratch("eos");
    opd_policy::save(&model_of(49_152), &tokenizer, &dir, SaveDtype::F32).unwrap();
    assert!(opd_policy::load::<B>(&dir, &Default::default()).is_ok());
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [2, 60000]}"#,
    )
    .unwrap();
    let text = opd_policy::load::<B>(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("EOS token id 60000") && text.contains("49152"),
        "{text}"
    );
    let dir = scratch("small-model");
    opd_policy::save(&model_of(1_000), &tokenizer, &dir, SaveDtype::F32).unwrap();
    let text = opd_policy::load::<B>(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("49152 tokens") && text.contains("only 1000"),
        "{text}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261122),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Truncated or mutated weight files load or fail with an error; never a panic.
    #[test]
    fn mutated_files_never_panic(cut in 0usize..4000, flips in prop::collection::vec((0usize..4000, any::<u8>()), 0..6)) {
        let dir = scratch("mutate");
        let (_, model) = saved_tiny("mutate-src", 9);
        model.save_hf(&dir, SaveDtype::F32).unwrap();
        let path = dir.join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if cut < bytes.len() {
            bytes.truncate(bytes.len() - cut);
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = Llama::<B>::from_hf_folder(&dir, &Default::default());
    }
}

/// Biases follow the config: one it promises must be there, one it does not must not be
/// (either way the model would compute something else); a Llama with `attention_bias` has
/// them on q, k, v and the output projection, as in `transformers`, and round-trips.
#[test]
fn attention_biases_follow_the_config() {
    let load = |dir: &Path| Llama::<B>::from_hf_folder(dir, &Default::default());

    let (dir, _) = saved_tiny("bias-missing", 5);
    rewrite(&dir, |t| {
        t.retain(|(n, ..)| n != "model.layers.0.self_attn.q_proj.bias")
    });
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, PolicyError::MissingTensor { name, .. } if name == "model.layers.0.self_attn.q_proj.bias"),
        "{err}"
    );

    let (dir, _) = saved_tiny("bias-extra", 6);
    rewrite(&dir, |t| {
        let d = common::tiny(opd_policy::Architecture::Qwen2, false).hidden_size;
        let zeros = vec![0u8; 4 * d];
        t.push((
            "model.layers.1.self_attn.o_proj.bias".into(),
            Dtype::F32,
            vec![d],
            zeros,
        ));
    });
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("`model.layers.1.self_attn.o_proj.bias` is in the file, but the config gives this layer no bias"),
        "{err}"
    );

    let mut config = common::tiny(opd_policy::Architecture::Llama, false);
    config.attention_bias = true;
    let model = Llama::<B>::init(&config, 7, &Default::default());
    assert!(model.layers[0].self_attn.o_proj.base.bias.is_some());
    let dir = scratch("llama-bias");
    model.save_hf(&dir, SaveDtype::F32).unwrap();
    let loaded = load(&dir).unwrap();
    let diff = common::max_diff(model.logits(probe(), &[0]), loaded.logits(probe(), &[0]));
    assert_eq!(diff, 0.0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `transformers` 4.47 and later save the chat template as `chat_template.jinja` beside a
/// `tokenizer_config.json` without one: the folder's tokenizer reads it from there.
#[test]
fn a_chat_template_saved_as_its_own_file_is_read() {
    let dir = scratch("template-file");
    let tokenizer =
        opd_policy::ChatTokenizer::characters("0123456789+", "{{ messages[0].content }}!").unwrap();
    tokenizer.save_hf(&dir).unwrap();
    let config_path = dir.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let source = config["chat_template"].as_str().unwrap().to_string();
    config.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&config_path, config.to_string()).unwrap();
    std::fs::write(dir.join("chat_template.jinja"), source).unwrap();
    let read = opd_policy::ChatTokenizer::from_hf_folder(&dir).unwrap();
    let message = [opd_policy::Message::user("1+1")];
    assert_eq!(read.apply_chat_template(&message, false).unwrap(), "1+1!");
    // Without either, applying a template is the error it was.
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    let bare = opd_policy::ChatTokenizer::from_hf_folder(&dir).unwrap();
    assert!(bare.apply_chat_template(&message, false).is_err());
}
