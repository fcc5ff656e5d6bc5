//! Hugging Face safetensors: a model folder's weights as a source (one `model.safetensors`, or
//! shards listed in `model.safetensors.index.json`; F32, F16 and BF16 stored, f32 computed),
//! and the model's weights written back in Hugging Face layout.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorView};

use crate::config::LlamaConfig;
use crate::error::{PolicyError, Result};
use crate::model::Llama;
use crate::weights::WeightSource;

/// One mapped `.safetensors` file with its parsed header.
struct Shard {
    path: PathBuf,
    bytes: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: PathBuf) -> Result<Self> {
        let io = |source| PolicyError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and lives as long as the shard; a checkpoint is not
        // expected to be modified while a model loads from it.
        let bytes = unsafe { Mmap::map(&file) }.map_err(io)?;
        if let Some(detail) = truncation(&bytes) {
            return Err(PolicyError::Corrupt { path, detail });
        }
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| PolicyError::Corrupt {
                path: path.clone(),
                detail: format!("safetensors header: {e}"),
            })?;
        Ok(Self {
            path,
            bytes,
            header_len,
            metadata,
        })
    }
}

/// Why a safetensors file is shorter than its own header says, in absolute file offsets, or
/// `None` when it is not (other damage is left to the safetensors parser).
fn truncation(bytes: &[u8]) -> Option<String> {
    let declared = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header_end = 8u64.saturating_add(declared);
    if (bytes.len() as u64) < header_end {
        return Some(format!(
            "truncated: the header needs bytes 8..{header_end} of the file, but the file has {} bytes",
            bytes.len()
        ));
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..header_end as usize]).ok()?;
    let data_end = header
        .as_object()?
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()?;
    let end = header_end.saturating_add(data_end);
    ((bytes.len() as u64) < end).then(|| {
        format!(
            "truncated: the tensors need bytes {header_end}..{end} of the file, but the file has {} bytes",
            bytes.len()
        )
    })
}

/// Converts little-endian F32, F16 or BF16 bytes to f32.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let pairs = || {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(pairs().map(|h| half::f16::from_bits(h).to_f32()).collect()),
        Dtype::BF16 => Some(pairs().map(|h| half::bf16::from_bits(h).to_f32()).collect()),
        _ => None,
    }
}

/// The safetensors files of a Hugging Face model folder.
pub(crate) struct SafetensorsSource {
    folder: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name → shard index.
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// Opens `folder/model.safetensors`, or the shards named by
    /// `folder/model.safetensors.index.json`.
    pub fn open(folder: &Path) -> Result<Self> {
        let index_path = folder.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| PolicyError::Io {
                path: index_path.clone(),
                source,
            })?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| PolicyError::Corrupt {
                    path: index_path.clone(),
                    detail: format!("line {}: {e}", e.line()),
                })?;
            let map = index["weight_map"]
                .as_object()
                .ok_or_else(|| PolicyError::MissingField {
                    path: index_path.clone(),
                    field: "weight_map".into(),
                })?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|v| v.as_str().map(|f| folder.join(f)))
                .collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec![folder.join("model.safetensors")]
        };
        let shards = files
            .into_iter()
            .map(Shard::open)
            .collect::<Result<Vec<_>>>()?;
        let index = shards
            .iter()
            .enumerate()
            .flat_map(|(i, shard)| shard.metadata.tensors().into_keys().map(move |n| (n, i)))
            .collect();
        Ok(Self {
            folder: folder.to_path_buf(),
            shards,
            index,
        })
    }
}

impl WeightSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.folder
    }

    fn contains(&self, name: &str) -> Result<bool> {
        Ok(self.index.contains_key(name))
    }

    fn read(&self, name: &str, _expected: &[usize]) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let Some(&shard) = self.index.get(name) else {
            return Ok(None);
        };
        let shard = &self.shards[shard];
        let info = shard.metadata.info(name).expect("indexed from this header");
        let (start, end) = info.data_offsets;
        let offset = 8 + shard.header_len;
        let bytes = &shard.bytes[offset + start..offset + end];
        let values = to_f32(info.dtype, bytes).ok_or_else(|| PolicyError::Unsupported {
            path: shard.path.clone(),
            detail: format!(
                "tensor `{name}` is stored as {:?} (opd reads F32, F16, BF16)",
                info.dtype
            ),
        })?;
        Ok(Some((values, info.shape.clone())))
    }
}

/// The precision weights are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    /// Exact.
    #[default]
    F32,
    /// Half the size, rounded to nearest even.
    Bf16,
}

impl<B: Backend> Llama<B> {
    /// Loads a Hugging Face model folder: `config.json` and its safetensors weights.
    pub fn from_hf_folder(folder: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let folder = folder.as_ref();
        let config = LlamaConfig::from_hf_file(folder.join("config.json"))?;
        let source = SafetensorsSource::open(folder)?;
        Self::from_source(&config, &source, device)
    }

    /// Every weight under its Hugging Face name, `[out, in]` matrices, adapters merged.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<f32>, Vec<usize>)> {
        let model = self.clone().merge_adapters();
        let mut out = Vec::new();
        let mut push = |name: String, tensor: burn::tensor::TensorData| {
            let shape = tensor.shape.to_vec();
            out.push((name, tensor.convert::<f32>().into_vec().unwrap(), shape));
        };
        let linear = |name: &str, l: &burn::nn::Linear<B>| {
            let weight = l.weight.val().transpose().into_data();
            let bias = l.bias.as_ref().map(|b| b.val().into_data());
            (
                format!("{name}.weight"),
                weight,
                bias.map(|b| (format!("{name}.bias"), b)),
            )
        };
        push(
            "model.embed_tokens.weight".into(),
            model.embed_tokens.weight.val().into_data(),
        );
        for (l, block) in model.layers.iter().enumerate() {
            let p = format!("model.layers.{l}.");
            let attn = &block.self_attn;
            for (target, layer) in block.projections() {
                let (wn, w, bias) = linear(&format!("{p}{}", target.module()), &layer.base);
                push(wn, w);
                if let Some((bn, b)) = bias {
                    push(bn, b);
                }
            }
            for (name, norm) in [
                ("input_layernorm", Some(&block.input_layernorm)),
                (
                    "post_attention_layernorm",
                    Some(&block.post_attention_layernorm),
                ),
                ("self_attn.q_norm", attn.q_norm.as_ref()),
                ("self_attn.k_norm", attn.k_norm.as_ref()),
            ] {
                if let Some(norm) = norm {
                    push(format!("{p}{name}.weight"), norm.gamma.val().into_data());
                }
            }
        }
        push(
            "model.norm.weight".into(),
            model.norm.gamma.val().into_data(),
        );
        if let Some(head) = &model.lm_head {
            let (wn, w, _) = linear("lm_head", head);
            push(wn, w);
        }
        out
    }

    /// Writes `folder/model.safetensors` and `folder/config.json` in Hugging Face layout
    /// (adapters merged). Each file is written to a temporary name and renamed into place.
    pub fn save_hf(&self, folder: impl AsRef<Path>, dtype: SaveDtype) -> Result<()> {
        let folder = folder.as_ref();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PolicyError::Io { path, source }
        };
        std::fs::create_dir_all(folder).map_err(io(folder))?;
        let tensors = self.hf_tensors();
        let encoded: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .into_iter()
            .map(|(name, values, shape)| {
                let bytes = match dtype {
                    SaveDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    SaveDtype::Bf16 => values
                        .iter()
                        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                        .collect(),
                };
                (name, bytes, shape)
            })
            .collect();
        let stored = match dtype {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::Bf16 => Dtype::BF16,
        };
        let views = encoded
            .iter()
            .map(|(name, bytes, shape)| {
                let view = TensorView::new(stored, shape.clone(), bytes).expect("sizes agree");
                (name.clone(), view)
            })
            .collect::<Vec<_>>();
        let weights = folder.join("model.safetensors");
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| PolicyError::Corrupt {
                path: weights.clone(),
                detail: format!("serializing: {e}"),
            })?;
        write_atomically(&weights, &bytes)?;
        let mut config = self.config.to_hf_json();
        config["torch_dtype"] = match dtype {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
        }
        .into();
        let text = serde_json::to_string_pretty(&config).expect("json");
        write_atomically(&folder.join("config.json"), text.as_bytes())
    }
}

/// Writes `bytes` to `path.tmp`, syncs it, renames it to `path` and syncs the folder: a
/// reader sees the old file or the new one, also after a power loss.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let io = |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}
