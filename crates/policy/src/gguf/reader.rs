//! GGUF v2/v3 container: header, metadata and tensor directory, read with every length checked
//! against the bytes that remain, so a forged count cannot allocate without bound.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::quant::GgmlType;
use crate::error::{PolicyError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type, widened.
    U64(u64),
    /// Any signed integer type, widened.
    I64(i64),
    /// `f32` or `f64`, widened.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGUF stores them.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte range of its data within the file.
    pub range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape in row-major order (outermost first), as PyTorch and burn use it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file held in memory.
#[derive(Debug)]
pub struct GgufFile {
    /// Where it was read from (for error messages).
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor directory, in file order.
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, what: impl Into<String>) -> PolicyError {
        PolicyError::Corrupt {
            path: self.path.to_path_buf(),
            detail: format!("{} (at byte {})", what.into(), self.pos),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.corrupt(format!("truncated while reading {what}")))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_item_bytes` each: refused if the rest of the file
    /// cannot hold that many.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > remaining {
            return Err(self.corrupt(format!(
                "{what} = {n} exceeds the file's remaining {remaining} bytes"
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(1, what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.corrupt(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match kind {
            0 => Value::U64(self.array::<1>(key)?[0] as u64),
            1 => Value::I64(self.array::<1>(key)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.array(key)?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.array(key)?) as i64),
            4 => Value::U64(self.u32(key)? as u64),
            5 => Value::I64(i32::from_le_bytes(self.array(key)?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.array(key)?) as f64),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 if depth < 4 => {
                let inner = self.u32(key)?;
                let len = self.count(min_value_bytes(inner), key)?;
                let values = (0..len)
                    .map(|_| self.value(inner, key, depth + 1))
                    .collect::<Result<_>>()?;
                Value::Array(values)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(
                    self.corrupt(format!("metadata `{key}` has unknown value type {other}"))
                );
            }
        })
    }
}

/// The smallest encoding of one value of a metadata type (for bounding array lengths).
fn min_value_bytes(kind: u32) -> usize {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8..=12 => 8,
        _ => 1,
    }
}

impl GgufFile {
    /// Reads and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, bytes)
    }

    /// Parses GGUF `bytes`; `path` only names the source in errors.
    pub fn parse(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.as_ref();
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            path,
        };
        if c.take(4, "magic")? != MAGIC {
            return Err(c.corrupt("not a GGUF file (bad magic)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.corrupt(format!("unsupported GGUF version {version}")));
        }
        // A tensor entry takes at least 8 (name) + 4 + 8 + 4 + 8 bytes; a metadata entry 8 + 4 + 1.
        let tensor_count = c.count(32, "tensor count")?;
        let kv_count = c.count(13, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            if let Some(first) = metadata.get(&key).filter(|&first| *first != value) {
                return Err(c.corrupt(format!(
                    "metadata key `{key}` appears twice, as {first:?} and as {value:?}"
                )));
            }
            metadata.insert(key, value);
        }
        let mut entries: Vec<(String, Vec<u64>, u32, u64)> = Vec::with_capacity(tensor_count);
        let mut names = std::collections::HashSet::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(c.corrupt(format!(
                    "tensor `{name}` has {n_dims} dimensions (at most 4)"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&name))
                .collect::<Result<Vec<_>>>()?;
            let type_id = c.u32(&name)?;
            let offset = c.u64(&name)?;
            if !names.insert(name.clone()) {
                return Err(c.corrupt(format!("tensor `{name}` appears twice")));
            }
            entries.push((name, dims, type_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => match value.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(c.corrupt(format!(
                        "general.alignment is {value:?}; expected a power of two"
                    )));
                }
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let tensors = entries
            .into_iter()
            .map(|(name, dims, type_id, offset)| {
                let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| PolicyError::Unsupported {
                    path: path.to_path_buf(),
                    detail: format!("tensor `{name}` has ggml type {type_id}, which opd cannot dequantize"),
                })?;
                let elements = dims
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| c.corrupt(format!("tensor `{name}` has an overflowing shape {dims:?}")))?;
                let size = ggml_type
                    .byte_size(elements)
                    .ok_or_else(|| c.corrupt(format!("tensor `{name}`: {elements} elements is not a whole number of {ggml_type:?} blocks")))?;
                if !offset.is_multiple_of(alignment) {
                    return Err(c.corrupt(format!(
                        "tensor `{name}` starts at data offset {offset}, not a multiple of the alignment {alignment}"
                    )));
                }
                let start = data_start.checked_add(offset);
                let end = start.and_then(|s| s.checked_add(size));
                match (start, end) {
                    (Some(start), Some(end)) if end <= bytes.len() as u64 => Ok(TensorInfo {
                        name,
                        dims,
                        ggml_type,
                        range: start as usize..end as usize,
                    }),
                    _ => Err(c.corrupt(format!(
                        "truncated: tensor `{name}` needs bytes {}..{} of the file ({size} bytes), but the file has {} bytes",
                        start.unwrap_or(u64::MAX),
                        end.unwrap_or(u64::MAX),
                        bytes.len()
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.range.clone()]
    }

    /// A tensor dequantized to f32, row-major with [`TensorInfo::shape`].
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensor(name)
            .ok_or_else(|| PolicyError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        Ok((
            info.ggml_type.dequantize(self.data(info), info.len()),
            info.shape(),
        ))
    }

    /// A metadata value, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| PolicyError::MissingField {
                path: self.path.clone(),
                field: key.to_string(),
            })
    }
}
