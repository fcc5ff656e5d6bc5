//! Loading a model with its tokenizer from a path (a `.gguf` file or a Hugging Face folder),
//! and saving both as a Hugging Face folder.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::error::{PolicyError, Result};
use crate::gguf::GgufFile;
use crate::model::Llama;
use crate::safetensors::SaveDtype;
use crate::tokenizer::ChatTokenizer;

/// Loads `path`: a GGUF file, or a folder with `config.json`, safetensors and `tokenizer.json`.
pub fn load<B: Backend>(
    path: impl AsRef<Path>,
    device: &B::Device,
) -> Result<(Llama<B>, ChatTokenizer)> {
    let path = path.as_ref();
    let (model, tokenizer) = if path.is_dir() {
        // The model first: a folder that is not a model is then named by its missing
        // `config.json`, not by its tokenizer.
        let model = Llama::from_hf_folder(path, device)?;
        (model, ChatTokenizer::from_hf_folder(path)?)
    } else {
        if !path.exists() {
            return Err(PolicyError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or folder (expected a .gguf file or a Hugging Face folder)",
                ),
            });
        }
        let file = GgufFile::open(path)?;
        (
            Llama::from_gguf(&file, device)?,
            ChatTokenizer::from_gguf(&file)?,
        )
    };
    check_tokenizer(path, model.config.vocab_size, &tokenizer)?;
    Ok((model, tokenizer))
}

/// The tokenizer must fit the model's output: its special ids inside the vocabulary (an EOS
/// outside it would never be sampled, so generation would run past the turn), and no more
/// tokens than the model has logits. Fewer is allowed: Qwen models pad their output.
fn check_tokenizer(path: &Path, vocab: usize, tokenizer: &ChatTokenizer) -> Result<()> {
    let corrupt = |detail: String| PolicyError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let special = &tokenizer.special;
    let ids = special.eos.iter().map(|&id| ("EOS", id));
    let ids = ids.chain(special.bos.map(|id| ("BOS", id)));
    let ids = ids.chain(special.pad.map(|id| ("padding", id)));
    for (what, id) in ids {
        if id as usize >= vocab {
            return Err(corrupt(format!(
                "the {what} token id {id} is outside the model's vocabulary of {vocab}"
            )));
        }
    }
    let tokens = tokenizer.vocab_size();
    if tokens > vocab {
        return Err(corrupt(format!(
            "the tokenizer has {tokens} tokens but the model scores only {vocab}"
        )));
    }
    Ok(())
}

/// Saves the model (adapters merged) and tokenizer as a Hugging Face folder that
/// `transformers` loads: `model.safetensors`, `config.json`, `tokenizer.json`,
/// `tokenizer_config.json`, `generation_config.json`.
pub fn save<B: Backend>(
    model: &Llama<B>,
    tokenizer: &ChatTokenizer,
    folder: impl AsRef<Path>,
    dtype: SaveDtype,
) -> Result<()> {
    let folder = folder.as_ref();
    model.save_hf(folder, dtype)?;
    tokenizer.save_hf(folder)
}
