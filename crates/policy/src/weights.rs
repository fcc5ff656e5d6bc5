//! Where a [`Llama`]'s weights come from: any store of tensors addressed by their Hugging Face
//! names (a safetensors folder, a GGUF file, a seeded random draw), read through [`Weights`],
//! a view under a name prefix from which each module loads its own tensors (as
//! candle-transformers' `VarBuilder`).

use std::cell::RefCell;
use std::path::Path;

use burn::module::Param;
use burn::nn::{Linear, RmsNorm};
use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::config::LlamaConfig;
use crate::error::{PolicyError, Result};

/// A store of tensors addressed by their Hugging Face names (`model.layers.0.mlp.up_proj.weight`).
pub(crate) trait WeightSource {
    /// The file named in errors.
    fn path(&self) -> &Path;
    /// The tensor as f32 values and its shape, `None` when the store has no such tensor.
    /// `expected` is the shape the model needs: a generated source makes it, a file's own
    /// shape is checked against it.
    fn read(&self, name: &str, expected: &[usize]) -> Result<Option<(Vec<f32>, Vec<usize>)>>;
    /// Whether the store holds `name` (asked of tensors the config does not expect, so that a
    /// file that disagrees with its config is refused).
    fn contains(&self, name: &str) -> Result<bool>;
    /// The tensor's name as the file spells it, for errors (a GGUF file's `blk.0.attn_q.weight`).
    fn file_name(&self, name: &str) -> String {
        name.to_string()
    }
}

/// A source's tensors under a name prefix, on a device, for a config.
pub(crate) struct Weights<'a, B: Backend> {
    source: &'a dyn WeightSource,
    prefix: String,
    /// The model's config.
    pub config: &'a LlamaConfig,
    device: &'a B::Device,
}

impl<'a, B: Backend> Weights<'a, B> {
    /// The whole of `source`.
    pub fn new(
        source: &'a dyn WeightSource,
        config: &'a LlamaConfig,
        device: &'a B::Device,
    ) -> Self {
        Self {
            source,
            prefix: String::new(),
            config,
            device,
        }
    }

    /// The tensors under `name.` (`model`, then `layers.0`, then `self_attn`).
    pub fn pp(&self, name: &str) -> Self {
        Self {
            source: self.source,
            prefix: self.full(name),
            config: self.config,
            device: self.device,
        }
    }

    fn full(&self, name: &str) -> String {
        match self.prefix.is_empty() {
            true => name.to_string(),
            false => format!("{}.{name}", self.prefix),
        }
    }

    /// The tensor `name`, which must exist with shape `shape` and finite values.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let full = self.full(name);
        let values =
            self.read_checked(&full, &shape)?
                .ok_or_else(|| PolicyError::MissingTensor {
                    path: self.source.path().to_path_buf(),
                    name: self.source.file_name(&full),
                })?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    /// Reads `name` if present; when present its shape must be `expected` and every value
    /// finite (NaN or infinity in a weight is found here, once, rather than as garbage output
    /// later).
    fn read_checked(&self, name: &str, expected: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some((values, shape)) = self.source.read(name, expected)? else {
            return Ok(None);
        };
        let name = self.source.file_name(name);
        let corrupt = |detail| PolicyError::Corrupt {
            path: self.source.path().to_path_buf(),
            detail,
        };
        if shape != expected {
            return Err(corrupt(format!(
                "tensor `{name}` has shape {shape:?}, the config implies {expected:?}"
            )));
        }
        let mut bad = values.iter().enumerate().filter(|(_, v)| !v.is_finite());
        if let Some((first, value)) = bad.next() {
            return Err(corrupt(format!(
                "tensor `{name}` has {} non-finite values (the first, {value}, at index {first})",
                1 + bad.count()
            )));
        }
        Ok(Some(values))
    }

    /// The linear layer `name` from its `[out, in]` weight and, when `with_bias`, its bias. A
    /// bias in the source that the config does not give the layer is refused: a file and a
    /// config that disagree would compute something else than the model's authors. burn's
    /// `[in, out]` weight is kept as a transposed view of the `[out, in]` matrix, the layout
    /// `row_matmul::matmul_weight` reads in place.
    pub fn linear(&self, name: &str, [out, inp]: [usize; 2], with_bias: bool) -> Result<Linear<B>> {
        let layer = self.pp(name);
        let weight: Tensor<B, 2> = layer.tensor("weight", [out, inp])?;
        let bias = match with_bias {
            true => Some(layer.tensor("bias", [out])?),
            false if self.source.contains(&layer.full("bias"))? => {
                return Err(PolicyError::Corrupt {
                    path: self.source.path().to_path_buf(),
                    detail: format!(
                        "tensor `{}` is in the file, but the config gives this layer no bias \
                         (attention_bias = {})",
                        self.source.file_name(&layer.full("bias")),
                        self.config.attention_bias
                    ),
                });
            }
            false => None,
        };
        Ok(Linear {
            weight: Param::from_tensor(weight.transpose()),
            bias: bias.map(Param::from_tensor),
        })
    }

    /// The RMSNorm `name` of `size` gains, with the config's epsilon.
    pub fn norm(&self, name: &str, size: usize) -> Result<RmsNorm<B>> {
        Ok(RmsNorm {
            gamma: Param::from_tensor(self.pp(name).tensor("weight", [size])?),
            epsilon: self.config.rms_norm_eps,
        })
    }
}

/// Random weights drawn from a seed in the order the model asks for them: matrices
/// `U(−0.05, 0.05)`, biases `U(−0.05, 0.05)`, norm gains `1 + U(−0.05, 0.05)`, the embedding
/// `U(−0.25, 0.25)` (logits spread over a few nats).
pub(crate) struct RandomSource {
    rng: RefCell<rand_chacha::ChaCha8Rng>,
}

impl RandomSource {
    /// Draws from `seed`.
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            rng: RefCell::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
        }
    }
}

impl WeightSource for RandomSource {
    fn path(&self) -> &Path {
        Path::new("<random weights>")
    }

    fn read(&self, name: &str, expected: &[usize]) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        use rand::Rng;
        let (around, scale) = match name {
            "model.embed_tokens.weight" => (0.0, 5.0),
            _ if name.ends_with("norm.weight") => (1.0, 1.0),
            _ => (0.0, 1.0),
        };
        let mut rng = self.rng.borrow_mut();
        let values = (0..expected.iter().product::<usize>())
            .map(|_| (around + 0.05 * (2.0 * rng.random::<f32>() - 1.0)) * scale)
            .collect();
        Ok(Some((values, expected.to_vec())))
    }

    /// A random source holds what the model asks for and nothing else.
    fn contains(&self, _name: &str) -> Result<bool> {
        Ok(false)
    }
}
