//! Rotary position embeddings in the Hugging Face `rotate_half` convention, with per-row
//! positions so that left-padded rows start at position 0.

use burn::tensor::{Tensor, TensorData, backend::Backend, s};

use crate::config::LlamaConfig;

/// Inverse frequencies `f_i = θ^(−2i/hd)`, `i < hd/2`, with Llama-3 scaling when configured:
/// long wavelengths (`2π/f > original/low_freq_factor`) are divided by `factor`, short ones
/// (`< original/high_freq_factor`) kept, and the band between interpolated smoothly.
pub fn inverse_frequencies(config: &LlamaConfig) -> Vec<f64> {
    let hd = config.head_dim as f64;
    (0..config.head_dim / 2)
        .map(|i| config.rope_theta.powf(-((2 * i) as f64) / hd))
        .map(|f| match config.rope_scaling {
            None => f,
            Some(s) => {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let original = s.original_max_position_embeddings as f64;
                let (low, high) = (original / s.low_freq_factor, original / s.high_freq_factor);
                if wavelen < high {
                    f
                } else if wavelen > low {
                    f / s.factor
                } else {
                    let smooth = (original / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            }
        })
        .collect()
}

/// `cos(p·f_i)` and `sin(p·f_i)` for the positions `p` of each row, `[B, 1, T, hd/2]` each.
pub(crate) struct RopeTables<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for `positions[b][t]`, all rows of equal length `T`.
    pub fn new(inv_freq: &[f64], positions: &[Vec<usize>], device: &B::Device) -> Self {
        let (rows, len, half) = (positions.len(), positions[0].len(), inv_freq.len());
        let angles = || {
            positions
                .iter()
                .flatten()
                .flat_map(|&p| inv_freq.iter().map(move |f| p as f64 * f))
        };
        let table = |f: fn(f64) -> f64| {
            let v: Vec<f32> = angles().map(|a| f(a) as f32).collect();
            Tensor::from_data(TensorData::new(v, [rows, 1, len, half]), device)
        };
        Self {
            cos: table(f64::cos),
            sin: table(f64::sin),
        }
    }

    /// `x·cos + rotate_half(x)·sin` on `[B, heads, T, hd]`, `rotate_half(x) = [−x₂, x₁]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let hd = x.dims()[3];
        let x1 = x.clone().slice(s![.., .., .., 0..hd / 2]);
        let x2 = x.slice(s![.., .., .., hd / 2..hd]);
        Tensor::cat(
            vec![
                x1.clone() * self.cos.clone() - x2.clone() * self.sin.clone(),
                x2 * self.cos.clone() + x1 * self.sin.clone(),
            ],
            3,
        )
    }
}
