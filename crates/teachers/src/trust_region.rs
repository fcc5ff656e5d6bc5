//! The trust-region teacher: logits between a frozen reference and the current student.

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use opd_policy::{Llama, SequenceBatch, Trainable};

use crate::error::{Result, TeacherError};
use crate::frozen::FrozenInitial;
use crate::output::{Request, TeacherOutput};
use crate::teacher::{Teacher, TeacherScores, respond};

/// **Trust-region** teacher: logits `z_T = lerp(z_ref, z_cur, α) = z_ref + α·(z_cur − z_ref)`
/// from the frozen initial weights and the current student's (SDPO's alternative to EMA, with
/// α in the role of η). `α = 0` is the frozen teacher, `α = 1` the current one. Two teacher
/// forwards per call.
#[derive(Debug, Clone)]
pub struct TrustRegion<B: AutodiffBackend, M: Trainable<B> = Llama<B>> {
    reference: FrozenInitial<B, M>,
    alpha: f64,
}

impl<B: AutodiffBackend, M: Trainable<B>> TrustRegion<B, M> {
    /// A trust region around `student` as it is now, with weight `α ∈ [0, 1]` on the current
    /// student.
    pub fn new(student: &M, alpha: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(TeacherError::InvalidArgument {
                name: "alpha",
                value: alpha.to_string(),
                expected: "in [0, 1] (the current student's weight)",
            });
        }
        Ok(Self {
            reference: FrozenInitial::new(student),
            alpha,
        })
    }
}

impl<B: AutodiffBackend, M: Trainable<B>> Teacher<B, M> for TrustRegion<B, M> {
    fn outputs(
        &self,
        student: &M,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>> {
        let (reference, current) = (self.reference.model(student), student.valid());
        let alpha = self.alpha;
        respond(batch, request, |rows| {
            Ok(
                match (
                    TeacherScores::of(&reference, rows)?,
                    TeacherScores::of(&current, rows)?,
                ) {
                    // (1 − α)·h_ref·W_refᵀ + α·h_cur·W_curᵀ: one product over both widths.
                    (
                        TeacherScores::Hidden {
                            hidden: h_ref,
                            head: w_ref,
                        },
                        TeacherScores::Hidden {
                            hidden: h_cur,
                            head: w_cur,
                        },
                    ) => TeacherScores::Hidden {
                        hidden: Tensor::cat(
                            vec![h_ref.mul_scalar(1.0 - alpha), h_cur.mul_scalar(alpha)],
                            2,
                        ),
                        head: Tensor::cat(vec![w_ref, w_cur], 1),
                    },
                    (reference, current) => {
                        let z_ref = reference.logits();
                        TeacherScores::Logits(
                            z_ref.clone() + (current.logits() - z_ref).mul_scalar(alpha),
                        )
                    }
                },
            )
        })
    }
}
