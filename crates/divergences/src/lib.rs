//! # opd-divergences
//!
//! Divergences between a student's and a teacher's next-token distributions, evaluated on the
//! student's own tokens: the losses of on-policy distillation (OPD, OPSD, SDFT, SDPO) and of
//! supervised distillation.
//!
//! With `p = softmax(z / τ)` for student logits `z_S` and teacher logits `z_T`:
//!
//! | divergence | formula | gradient w.r.t. `z_S` (τ = 1) |
//! |---|---|---|
//! | forward KL | `KL(p_T‖p_S) = Σ p_T (log p_T − log p_S)` | `p_S − p_T` |
//! | reverse KL | `KL(p_S‖p_T) = Σ p_S (log p_S − log p_T)` | `p_S ⊙ (d − E_{p_S}[d])`, `d = log p_S − log p_T` |
//! | JSD_β | `β KL(p_T‖m) + (1−β) KL(p_S‖m)`, `m = β p_T + (1−β) p_S` | `(1−β) p_S ⊙ (e − E_{p_S}[e])`, `e = log p_S − log m` |
//!
//! `β = 0` is exactly forward KL and `β = 1` exactly reverse KL. Everything is computed in log
//! space. Supports: the full vocabulary, or a top-k (teacher's, student's, or a precomputed
//! teacher top-k) plus a tail bucket. Sampled-token estimators `k1`, `k2`, `k3` and the OPD
//! token advantage live in [`sampled`].
//!
//! Full-vocabulary evaluation runs in chunks of positions with a closed-form backward (see
//! [`DivergenceBackend`]), so forward and backward add `O(chunk · V)` memory beyond the logits.
//! The teacher is always stop-gradient.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::Tensor;
//! use opd_divergences::{Divergence, DivergenceOptions, TeacherTarget, divergence};
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let student = Tensor::<B, 2>::from_floats([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], &device)
//!     .require_grad();
//! let teacher = Tensor::<B, 2>::from_floats([[2.0, 1.0, 0.5], [0.0, 1.0, 2.0]], &device);
//! let kl = divergence(student.clone(), TeacherTarget::Logits(teacher), DivergenceOptions::new(Divergence::ReverseKl))?;
//! let grads = kl.sum().backward();
//! assert_eq!(student.grad(&grads).unwrap().dims(), [2, 3]);
//! # Ok::<(), opd_divergences::DivergenceError>(())
//! ```

mod backend;
mod buckets;
mod check;
mod chunks;
mod error;
pub mod fast_exp;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod flex_lanes;
#[cfg(feature = "flex")]
mod flex_summary;
pub mod generic;
mod head;
mod host;
mod kind;
mod loss;
mod positions;
mod reduce;
mod row_summary;
pub mod sampled;
mod summary;

pub use backend::{DivergenceBackend, TrainingBackend};
pub use buckets::TeacherLogits;
pub use chunks::Rows;
pub use error::{DivergenceError, Result};
pub use head::{BlockObserver, HeadOptions, LogitBlock};
pub use host::host_values;
pub use kind::{Divergence, DivergenceOptions, Support};
pub use loss::{DistillationLoss, LossOutput};
pub use positions::{TeacherTarget, divergence, head_logits, token_log_probs};
pub use reduce::{Counts, Reduction, clip_per_token, reduce, reduce_share};
pub use row_summary::RowSummary;
pub use summary::summarize;
