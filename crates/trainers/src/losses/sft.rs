//! Supervised fine-tuning.

use burn::tensor::{Tensor, backend::Backend};

/// SFT's per-token loss `ℓ_t = −log p_θ(y*_t | x, y*_<t)` on the target's tokens (the
/// prompt is context, never a target). Aggregated by token mean it is the usual NLL.
pub fn nll<B: Backend>(lp: Tensor<B, 2>) -> Tensor<B, 2> {
    lp.neg()
}
