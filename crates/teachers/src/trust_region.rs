//! The trust-region teacher: logits between a frozen reference and the current student.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use opd_policy::{Llama, Policy, SequenceBatch};

use crate::error::{Result, TeacherError};
use crate::frozen::FrozenInitial;
use crate::output::{Request, TeacherOutput};
use crate::teacher::{Teacher, respond};

/// **Trust-region** teacher: logits `z_T = lerp(z_ref, z_cur, α) = z_ref + α·(z_cur − z_ref)`
/// from the frozen initial weights and the current student's (SDPO's alternative to EMA, with
/// α in the role of η). `α = 0` is the frozen teacher, `α = 1` the current one. Two teacher
/// forwards per call.
#[derive(Debug, Clone)]
pub struct TrustRegion<B: AutodiffBackend> {
    reference: FrozenInitial<B>,
    alpha: f64,
}

impl<B: AutodiffBackend> TrustRegion<B> {
    /// A trust region around `student` as it is now, with weight `α ∈ [0, 1]` on the current
    /// student.
    pub fn new(student: &Llama<B>, alpha: f64) -> Result<Self> {
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

impl<B: AutodiffBackend> Teacher<B> for TrustRegion<B> {
    fn outputs(
        &self,
        student: &Llama<B>,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>> {
        let (reference, current) = (self.reference.model(student), student.valid());
        respond(batch, request, |rows| {
            let z_ref = reference.response_logits(rows)?;
            let z_cur = current.response_logits(rows)?;
            Ok(z_ref.clone() + (z_cur - z_ref).mul_scalar(self.alpha))
        })
    }
}
