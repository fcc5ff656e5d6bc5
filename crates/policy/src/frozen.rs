//! Frozen weights in a lower precision: the choice ([`FrozenPrecision`]) and the conversion.
//!
//! A weight that does not train (the base under LoRA, a teacher, a frozen reference) can be
//! kept in bf16, half its f32 bytes; its products (`frozen_product`) round the activations to
//! bf16 and sum in f32. Trained weights, their gradients and the optimizer's moments stay f32.

use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// How a frozen weight's values are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrozenPrecision {
    /// As loaded, 32-bit floats.
    #[default]
    F32,
    /// bfloat16 (8 bits of exponent, 8 of mantissa), rounded to nearest even: half the bytes;
    /// products through the CPU's bf16 dot-product instructions where it has them.
    Bf16,
}

impl FrozenPrecision {
    /// The dtype of a weight kept in this precision.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The name a run file spells it with.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for FrozenPrecision {
    type Err = String;

    /// `"f32"` or `"bf16"`.
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("{other:?}: expected \"f32\" or \"bf16\"")),
        }
    }
}

/// `weight` (`[in, out]`, the transposed view of the `[out, in]` matrix) kept in `precision`,
/// still a transposed view of a row-major `[out, in]` buffer.
pub(crate) fn convert<B: Backend>(
    weight: Tensor<B, 2>,
    precision: FrozenPrecision,
) -> Tensor<B, 2> {
    let dtype = precision.dtype();
    if weight.dtype() == dtype {
        return weight;
    }
    weight.transpose().cast(dtype).transpose()
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use half::bf16;

    use super::*;
    use crate::flex_tensor::{into_flex, is_transposed_view};

    #[test]
    fn conversion_keeps_the_transposed_layout_and_rounds_to_bf16() {
        let w = Tensor::<Flex, 2>::random([24, 40], Distribution::Default, &Default::default())
            .transpose();
        let b = convert(w.clone(), FrozenPrecision::Bf16);
        assert_eq!(b.dtype(), DType::BF16);
        assert!(is_transposed_view(&into_flex(b.clone()).unwrap()));
        let want: Vec<f32> = w.into_data().to_vec::<f32>().unwrap();
        let got: Vec<f32> = b.into_data().convert::<f32>().to_vec().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(*g, bf16::from_f32(*w).to_f32());
        }
        let back = convert(
            convert(
                Tensor::<Flex, 2>::zeros([3, 5], &Default::default()),
                FrozenPrecision::Bf16,
            ),
            FrozenPrecision::F32,
        );
        assert_eq!(back.dtype(), DType::F32);
    }
}
