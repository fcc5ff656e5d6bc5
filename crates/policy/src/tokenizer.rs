//! Tokenizers: from a Hugging Face folder (`tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`), or rebuilt from GGUF metadata (byte-level BPE: vocabulary,
//! merges, the pre-tokenizer the model names, special tokens), together with the special token
//! ids and the chat template: a [`ChatTokenizer`].

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::chat::{ChatTemplate, Message};
use crate::error::{PolicyError, Result};
use crate::gguf::{GgufFile, Value};
use crate::safetensors::write_atomically;

/// GGUF `token_type` of control tokens (`<|im_start|>`, …): added as special tokens.
const CONTROL: u64 = 3;

/// Loads a Hugging Face `tokenizer.json`.
fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
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
fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
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
        .map_err(|e| PolicyError::Corrupt {
            path: file.path.clone(),
            detail: format!("tokenizer merges: {e}"),
        })?;
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

/// The token ids generation and padding need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// Tokens that end an answer (the tokenizer's EOS and the generation config's).
    pub eos: Vec<u32>,
    /// Padding; falls back to the first EOS when the model names none.
    pub pad: Option<u32>,
}

/// A tokenizer with the model's special tokens and chat template.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    /// The `tokenizers` pipeline.
    pub(crate) inner: Tokenizer,
    /// BOS, EOS and padding ids.
    pub special: SpecialTokens,
    /// The chat template, when the model has one.
    pub chat_template: Option<ChatTemplate>,
}

/// Reads a JSON file that may be absent.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| PolicyError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("line {}: {e}", e.line()),
        })
}

/// A token given as `"<s>"` or `{"content": "<s>", …}` in `tokenizer_config.json`.
fn token_text(value: &serde_json::Value) -> Option<&str> {
    value
        .as_str()
        .or_else(|| value.get("content").and_then(|c| c.as_str()))
}

impl ChatTokenizer {
    /// A tokenizer from a `tokenizers` pipeline, the model's special tokens and its chat
    /// template (none: [`Self::apply_chat_template`] is an error).
    pub fn new(
        pipeline: Tokenizer,
        special: SpecialTokens,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        Self {
            inner: pipeline,
            special,
            chat_template,
        }
    }

    /// The tokenizer stored in a GGUF file's metadata, with its special ids and chat template.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let id = |key: &str| {
            file.metadata
                .get(key)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        };
        let chat_template = match file
            .metadata
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
        {
            Some(source) => Some(ChatTemplate::new(source)?),
            None => None,
        };
        Ok(Self {
            inner: from_gguf(file)?,
            special: SpecialTokens {
                bos: id("tokenizer.ggml.bos_token_id"),
                eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
                pad: id("tokenizer.ggml.padding_token_id"),
            },
            chat_template,
        })
    }

    /// The tokenizer of a Hugging Face folder: `tokenizer.json`, with special tokens and chat
    /// template from `tokenizer_config.json` (the template from `chat_template.jinja` where the
    /// config has none, as `transformers` 4.47 and later save it) and extra EOS ids from
    /// `generation_config.json`.
    pub fn from_hf_folder(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref();
        let inner = from_file(folder.join("tokenizer.json"))?;
        let config_path = folder.join("tokenizer_config.json");
        let config = read_json(&config_path)?.unwrap_or_default();
        let id_of = |key: &str| {
            config
                .get(key)
                .and_then(token_text)
                .and_then(|t| inner.token_to_id(t))
        };
        let mut eos: Vec<u32> = id_of("eos_token").into_iter().collect();
        if let Some(generation) = read_json(&folder.join("generation_config.json"))? {
            let ids = match &generation["eos_token_id"] {
                serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_u64()).collect(),
                v => v.as_u64().into_iter().collect::<Vec<_>>(),
            };
            for id in ids {
                if !eos.contains(&(id as u32)) {
                    eos.push(id as u32);
                }
            }
        }
        let template_source = match &config["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(named) => named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        };
        let template_file = folder.join("chat_template.jinja");
        let template_source = match template_source {
            Some(source) => Some(source),
            None if template_file.is_file() => Some(
                std::fs::read_to_string(&template_file).map_err(|source| PolicyError::Io {
                    path: template_file.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let chat_template = match template_source {
            Some(source) => Some(ChatTemplate::new(source)?),
            None => None,
        };
        Ok(Self {
            special: SpecialTokens {
                bos: id_of("bos_token"),
                eos,
                pad: id_of("pad_token"),
            },
            inner,
            chat_template,
        })
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are recognized.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| PolicyError::Tokenizer(e.to_string()))
    }

    /// The text of `ids`, special tokens dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| PolicyError::Tokenizer(e.to_string()))
    }

    /// Tokens in the vocabulary, added tokens included: `|V|` as the model's embedding
    /// table must hold it.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The token string of `id` (as in `tokenizer.json`), `None` when there is none.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The text of a token id, `""` when unknown.
    fn token(&self, id: Option<u32>) -> String {
        id.and_then(|id| self.inner.id_to_token(id))
            .unwrap_or_default()
    }

    /// Renders `messages` with the chat template; with `add_generation_prompt` the text ends
    /// where the assistant's answer begins.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| PolicyError::Template("the model has no chat template".to_string()))?;
        template.render(
            messages,
            add_generation_prompt,
            &self.token(self.special.bos),
            &self.token(self.special.eos.first().copied()),
        )
    }

    /// Token ids of `messages` rendered with the chat template. Control tokens come only from
    /// the template: a message that spells one (`<|im_start|>` in user text) is encoded as
    /// the plain text it is, so a user cannot open a turn of another role.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        let controls: Vec<String> = self
            .inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special)
            .map(|t| t.content)
            .collect();
        let spells_control = |m: &&Message| controls.iter().any(|c| m.content.contains(c.as_str()));
        if !messages.iter().any(|m| spells_control(&m)) {
            return self.encode(&text);
        }
        // Find each such message's text in the rendered prompt (in order; a template may trim
        // it) and encode it with control tokens read as text.
        let mut literal = self.inner.clone();
        literal.set_encode_special_tokens(true);
        let (mut ids, mut from) = (Vec::new(), 0);
        for (i, message) in messages
            .iter()
            .enumerate()
            .filter(|(_, m)| spells_control(m))
        {
            let content = message.content.as_str();
            let found = [content, content.trim()]
                .into_iter()
                .find_map(|c| text[from..].find(c).map(|at| (from + at, c.len())));
            let Some((start, len)) = found else {
                return Err(PolicyError::Template(format!(
                    "message {i} spells a control token, and the chat template does not keep \
                     its text verbatim, so it cannot be encoded as text"
                )));
            };
            ids.extend(self.encode(&text[from..start])?);
            let encoding = literal
                .encode(&text[start..start + len], false)
                .map_err(|e| PolicyError::Tokenizer(e.to_string()))?;
            ids.extend_from_slice(encoding.get_ids());
            from = start + len;
        }
        ids.extend(self.encode(&text[from..])?);
        Ok(ids)
    }

    /// The id used to pad batches: `pad`, else the first EOS, else 0.
    pub fn pad_id(&self) -> u32 {
        self.special
            .pad
            .or(self.special.eos.first().copied())
            .unwrap_or(0)
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` into
    /// `folder`, as `transformers.AutoTokenizer` reads them.
    pub fn save_hf(&self, folder: impl AsRef<Path>) -> Result<()> {
        let folder = folder.as_ref();
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| PolicyError::Tokenizer(e.to_string()))?;
        write_atomically(&folder.join("tokenizer.json"), json.as_bytes())?;
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": false,
        });
        for (key, id) in [
            ("bos_token", self.special.bos),
            ("eos_token", self.special.eos.first().copied()),
            ("pad_token", self.special.pad),
        ] {
            if id.is_some() {
                config[key] = self.token(id).into();
            }
        }
        if let Some(template) = &self.chat_template {
            config["chat_template"] = template.source().into();
        }
        let generation = serde_json::json!({
            "bos_token_id": self.special.bos,
            "eos_token_id": self.special.eos,
            "pad_token_id": self.special.pad,
        });
        for (name, value) in [
            ("tokenizer_config.json", config),
            ("generation_config.json", generation),
        ] {
            let text = serde_json::to_string_pretty(&value).expect("json");
            write_atomically(&folder.join(name), text.as_bytes())?;
        }
        Ok(())
    }
}
