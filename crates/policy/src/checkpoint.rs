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
    if path.is_dir() {
        let tokenizer = ChatTokenizer::from_hf_folder(path)?;
        return Ok((Llama::from_hf_folder(path, device)?, tokenizer));
    }
    if !path.exists() {
        return Err(PolicyError::Io {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let file = GgufFile::open(path)?;
    Ok((
        Llama::from_gguf(&file, device)?,
        ChatTokenizer::from_gguf(&file)?,
    ))
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
