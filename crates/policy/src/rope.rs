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
    /// The same tables on the host, `[B, T, hd/2]` row-major, for the CPU kernel.
    #[cfg(feature = "flex")]
    host: std::sync::Arc<[Vec<f32>; 2]>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for `positions[b][t]`, all rows of equal length `T`.
    pub fn new(inv_freq: &[f64], positions: &[Vec<usize>], device: &B::Device) -> Self {
        let (rows, len, half) = (positions.len(), positions[0].len(), inv_freq.len());
        let angles: Vec<f64> = positions
            .iter()
            .flatten()
            .flat_map(|&p| inv_freq.iter().map(move |f| p as f64 * f))
            .collect();
        let table = |f: fn(f64) -> f64| angles.iter().map(|&a| f(a) as f32).collect::<Vec<_>>();
        let (cos, sin) = (table(f64::cos), table(f64::sin));
        let tensor = |v: &Vec<f32>| {
            Tensor::from_data(TensorData::new(v.clone(), [rows, 1, len, half]), device)
        };
        Self {
            cos: tensor(&cos),
            sin: tensor(&sin),
            #[cfg(feature = "flex")]
            host: std::sync::Arc::new([cos, sin]),
        }
    }

    /// `RoPE(x)` of `x` `[B, T, n, hd]`, returned head-major `[B, n, T, hd]`, the layout
    /// attention reads. On the CPU backend one pass rotates and transposes; elsewhere it is
    /// [`Self::apply`] on the transposed view.
    pub fn apply_heads(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        #[cfg(feature = "flex")]
        if let Some(y) = self.apply_heads_flex(&x) {
            return y;
        }
        self.apply(x.swap_dims(1, 2))
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

    /// [`Self::apply_heads`] on a contiguous f32 tensor of the CPU backend, computing exactly
    /// what [`Self::apply`] computes (the same products and sums, unfused); under
    /// `Autodiff<Flex>`, one graph node whose backward rotates the gradient back.
    #[cfg(feature = "flex")]
    fn apply_heads_flex(&self, x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
        let [rows, len, _, hd] = x.dims();
        if self.host[0].len() != rows * len * (hd / 2) || hd % 2 != 0 {
            return None;
        }
        if let Some(y) = crate::rope_grad::apply_heads(x, &self.host) {
            return Some(y);
        }
        let [rows, len, heads, hd] = x.dims();
        let flex = crate::flex_tensor::to_flex(x.clone())?;
        let x = flex.as_slice::<f32>()?;
        if x.is_empty() {
            return None;
        }
        let y = crate::rope_rotate::rotate(
            x,
            [rows, len, heads, hd],
            &self.host,
            crate::rope_rotate::Direction::ToHeads,
        );
        crate::flex_tensor::from_f32(y, [rows, heads, len, hd])
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    use super::RopeTables;

    /// The one-pass CPU kernel computes the generic path's values bit for bit, with left
    /// padding (row-dependent positions) and a head count that is not the row count.
    #[test]
    fn cpu_kernel_matches_the_generic_path() {
        let device = Default::default();
        let inv_freq: Vec<f64> = (0..4)
            .map(|i| 10000f64.powf(-(2 * i) as f64 / 8.0))
            .collect();
        let positions = vec![vec![0, 1, 2], vec![0, 0, 1]];
        let tables = RopeTables::<Flex>::new(&inv_freq, &positions, &device);
        let x = Tensor::<Flex, 4>::random([2, 3, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let fast = tables
            .apply_heads_flex(&x)
            .expect("flex f32 takes the kernel");
        let generic = tables.apply(x.swap_dims(1, 2));
        assert_eq!(fast.dims(), [2, 5, 3, 8]);
        assert_eq!(
            fast.into_data().to_vec::<f32>().unwrap(),
            generic.into_data().to_vec::<f32>().unwrap()
        );
    }
}
