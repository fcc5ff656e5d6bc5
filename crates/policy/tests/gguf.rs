//! The GGUF reader: against the Python `gguf` package on SmolLM2, on synthetic files, and on
//! truncated and mutated bytes (typed errors, never a panic or an unbounded allocation).

mod common;

use opd_policy::PolicyError;
use opd_policy::gguf::{GgmlType, GgufFile, Value};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

#[test]
fn smollm2_matches_the_python_gguf_reference() {
    let file = common::smollm2();
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2_gguf.json")).unwrap();
    let meta = &fixture["metadata"];
    assert_eq!(file.version, 3);
    assert_eq!(
        file.get("llama.block_count").unwrap().as_u64(),
        meta["llama.block_count"].as_u64()
    );
    assert_eq!(
        file.get("llama.embedding_length").unwrap().as_u64(),
        meta["llama.embedding_length"].as_u64()
    );
    assert_eq!(
        file.get("llama.rope.freq_base").unwrap().as_f64(),
        meta["llama.rope.freq_base"].as_f64()
    );
    assert_eq!(
        file.get("tokenizer.ggml.model").unwrap().as_str(),
        meta["tokenizer.ggml.model"].as_str()
    );
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(tokens.len() as u64, meta["tokens"].as_u64().unwrap());
    assert_eq!(tokens[1].as_str(), Some("<|im_start|>"));
    assert_eq!(file.tensors.len(), 272);
    for (name, expected) in fixture["tensors"].as_object().unwrap() {
        let (values, shape) = file.dequantize(name).unwrap();
        let expected_shape: Vec<usize> = expected["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, expected_shape, "{name}");
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let sum_sq: f64 = values.iter().map(|&v| (v as f64).powi(2)).sum();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
        assert!(
            close(sum, expected["sum"].as_f64().unwrap()),
            "{name}: sum {sum} vs {}",
            expected["sum"]
        );
        assert!(
            close(sum_sq, expected["sum_sq"].as_f64().unwrap()),
            "{name}: sum of squares"
        );
        for (key, got) in [
            ("first", &values[..8]),
            ("last", &values[values.len() - 8..]),
        ] {
            let want: Vec<f32> = expected[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got, &want[..], "{name}: {key} values");
        }
    }
}

/// A small valid GGUF v3 file: metadata of several types, an F32 tensor and a Q8_0 tensor.
fn synthetic() -> Vec<u8> {
    synthetic_with(&[])
}

/// [`synthetic`] with extra `u32` metadata entries after the others.
fn synthetic_with(extra: &[(&str, u32)]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes()); // tensors
    b.extend((4 + extra.len() as u64).to_le_bytes()); // metadata
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    string(&mut b, "llama");
    string(&mut b, "llama.block_count");
    b.extend(4u32.to_le_bytes());
    b.extend(2u32.to_le_bytes());
    string(&mut b, "llama.rope.freq_base");
    b.extend(6u32.to_le_bytes());
    b.extend(10000f32.to_le_bytes());
    string(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    string(&mut b, "a");
    string(&mut b, "bc");
    for (key, value) in extra {
        string(&mut b, key);
        b.extend(4u32.to_le_bytes());
        b.extend(value.to_le_bytes());
    }
    // tensor directory: "norm" F32 [4] at 0, "embd" Q8_0 [32, 2] (2 rows of 32) at 32
    string(&mut b, "norm");
    b.extend(1u32.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    string(&mut b, "embd");
    b.extend(2u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    for v in [1.0f32, -2.0, 0.5, 4.0] {
        b.extend(v.to_le_bytes());
    }
    b.extend([0u8; 16]); // pad to offset 32
    for row in 0..2 {
        b.extend(half::f16::from_f32(0.25).to_le_bytes());
        b.extend((0..32).map(|i| (i as i8 - 16 + row) as u8));
    }
    b
}

#[test]
fn synthetic_file_round_trips() {
    let file = GgufFile::parse("synthetic.gguf", synthetic()).unwrap();
    assert_eq!(
        file.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(file.get("llama.block_count").unwrap().as_u64(), Some(2));
    assert_eq!(
        file.get("llama.rope.freq_base").unwrap().as_f64(),
        Some(10000.0)
    );
    assert_eq!(
        file.get("tokenizer.ggml.tokens").unwrap(),
        &Value::Array(vec![Value::String("a".into()), Value::String("bc".into())])
    );
    assert_eq!(
        file.dequantize("norm").unwrap(),
        (vec![1.0, -2.0, 0.5, 4.0], vec![4])
    );
    let (embd, shape) = file.dequantize("embd").unwrap();
    assert_eq!(shape, vec![2, 32]);
    assert_eq!((embd[0], embd[32], embd[63]), (-4.0, -3.75, 4.0));
    assert_eq!(file.tensor("embd").unwrap().ggml_type, GgmlType::Q8_0);
    assert!(matches!(
        file.dequantize("nope"),
        Err(PolicyError::MissingTensor { .. })
    ));
    assert!(matches!(
        file.get("nope"),
        Err(PolicyError::MissingField { .. })
    ));
}

#[test]
fn bad_files_give_typed_errors_naming_the_file() {
    let err = GgufFile::parse("x.gguf", b"GGML\x03\0\0\0".to_vec()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("x.gguf: corrupt file: not a GGUF file"),
        "{err}"
    );
    let mut forged = synthetic();
    forged[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    assert!(matches!(
        GgufFile::parse("f.gguf", forged),
        Err(PolicyError::Corrupt { .. })
    ));
    let mut unknown = synthetic();
    let at = unknown.windows(4).position(|w| w == b"embd").unwrap() + 4 + 4 + 16;
    unknown[at..at + 4].copy_from_slice(&99u32.to_le_bytes()); // ggml type 99
    let err = GgufFile::parse("u.gguf", unknown).unwrap_err();
    assert!(
        matches!(err, PolicyError::Unsupported { .. }) && err.to_string().contains("`embd`"),
        "{err}"
    );
    assert!(matches!(
        GgufFile::open("does/not/exist.gguf"),
        Err(PolicyError::Io { .. })
    ));
}

/// Inconsistent metadata: a key twice with different values, an alignment that is 0 or not a
/// power of two, a tensor offset off the alignment, and truncation named with file offsets.
#[test]
fn inconsistent_metadata_is_an_error() {
    let parse = |bytes: Vec<u8>| GgufFile::parse("m.gguf", bytes).unwrap_err().to_string();
    // The same value twice is harmless; another value is not.
    assert!(GgufFile::parse("ok.gguf", synthetic_with(&[("llama.block_count", 2)])).is_ok());
    let err = parse(synthetic_with(&[("llama.block_count", 3)]));
    assert!(err.contains("`llama.block_count` appears twice"), "{err}");
    for alignment in [0, 48] {
        let err = parse(synthetic_with(&[("general.alignment", alignment)]));
        assert!(
            err.contains("general.alignment") && err.contains("power of two"),
            "{err}"
        );
    }
    let mut unaligned = synthetic();
    let at = unaligned.windows(4).position(|w| w == b"embd").unwrap() + 4 + 4 + 16 + 4;
    unaligned[at..at + 8].copy_from_slice(&40u64.to_le_bytes());
    let err = parse(unaligned);
    assert!(
        err.contains("`embd`") && err.contains("not a multiple of the alignment 32"),
        "{err}"
    );
    let bytes = synthetic();
    let len = bytes.len();
    let err = parse(bytes[..len - 10].to_vec());
    assert!(
        err.contains("truncated") && err.contains(&format!("..{len} of the file")),
        "{err}"
    );
}

/// A `block_count` lower than the blocks the file holds would drop layers silently.
#[test]
fn a_block_count_below_the_blocks_present_is_an_error() {
    let mut bytes = std::fs::read(common::smollm2_path()).unwrap();
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 4); // u32 type
    bytes[at + 4..at + 8].copy_from_slice(&28u32.to_le_bytes());
    let file = GgufFile::parse("smollm2-28.gguf", bytes).unwrap();
    let err = opd_policy::Llama::<burn::backend::Flex>::from_gguf(&file, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("block_count is 28") && err.contains("30 blocks"),
        "{err}"
    );
}

proptest! {
    // A fixed seed: CI sees the same cases every run.
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: RngSeed::Fixed(20261122), ..ProptestConfig::default() })]

    #[test]
    fn truncated_files_are_errors(len in 0usize..400) {
        let bytes = synthetic();
        prop_assume!(len < bytes.len());
        prop_assert!(GgufFile::parse("t.gguf", bytes[..len].to_vec()).is_err());
    }

    #[test]
    fn mutated_files_never_panic(edits in prop::collection::vec((0usize..400, any::<u8>()), 1..8)) {
        let mut bytes = synthetic();
        let n = bytes.len();
        for (at, v) in edits {
            bytes[at % n] = v;
        }
        if let Ok(file) = GgufFile::parse("m.gguf", bytes) {
            for t in &file.tensors {
                let (values, _) = file.dequantize(&t.name).unwrap();
                prop_assert_eq!(values.len(), t.len());
            }
        }
    }
}
