//! Tokenizers: from a Hugging Face `tokenizer.json`, or rebuilt from GGUF metadata (byte-level
//! BPE: vocabulary, merges, the pre-tokenizer the model names, special tokens).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{PolicyError, Result};
use crate::gguf::{GgufFile, Value};

/// GGUF `token_type` of control tokens (`<|im_start|>`, …): added as special tokens.
const CONTROL: u64 = 3;

/// Loads a Hugging Face `tokenizer.json`.
pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
    let path = path.as_ref();
    Tokenizer::from_file(path).map_err(|e| PolicyError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("tokenizer: {e}"),
    })
}

/// Rebuilds the tokenizer stored in GGUF metadata (`tokenizer.ggml.model = gpt2`).
///
/// Pre-tokenizers: `smollm` splits digits individually, then byte-level; `gpt2` and `default`
/// are byte-level alone. Others are refused (pass the model's `tokenizer.json` instead).
pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let err = |detail: String| PolicyError::Unsupported {
        path: file.path.clone(),
        detail,
    };
    let strings = |key: &str| -> Result<Vec<String>> {
        file.get(key)?
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect())
            .ok_or_else(|| PolicyError::MissingField {
                path: file.path.clone(),
                field: key.to_string(),
            })
    };
    let model = file
        .get("tokenizer.ggml.model")?
        .as_str()
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer model `{model}` (opd rebuilds byte-level BPE, `gpt2`)"
        )));
    }
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(PolicyError::Corrupt {
                path: file.path.clone(),
                detail: format!("tokenizer merge `{m}` is not two tokens"),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(format!("tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    match file
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default")
    {
        "smollm" => tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            byte_level.into(),
        ]))),
        "gpt2" | "default" => tokenizer.with_pre_tokenizer(Some(byte_level)),
        other => {
            return Err(err(format!(
                "pre-tokenizer `{other}` (pass the model's tokenizer.json)"
            )));
        }
    };
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    if let Some(types) = file
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    {
        let special: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| t.as_u64() == Some(CONTROL))
            .map(|(_, token)| AddedToken::from(token.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| err(format!("special tokens: {e}")))?;
    }
    Ok(tokenizer)
}
