//! # opd-teachers
//!
//! Teachers score the student's own tokens. Given the student's batch in the shared
//! [`opd_policy::SequenceBatch`] layout, a [`Teacher`] returns its distribution at every
//! response position in the support the loss asks for ([`TeacherSupport`]: full logits, a top-k with
//! its tail, or the sampled token's log-prob), at the loss's temperature, as constants: the
//! teacher runs on the inner backend (no graph, the fast CPU kernels), also when it shares the
//! student's weights.
//!
//! | strategy | teacher weights | update |
//! |---|---|---|
//! | [`External`] | another model with the same vocabulary | none |
//! | [`Remote`] | a model served over HTTP (`opd serve`), same vocabulary | none |
//! | [`FrozenInitial`] | the student at the start (LoRA: adapters off) | none |
//! | [`Current`] | the student now, stop-gradient | every step |
//! | [`Ema`] | `θ_T ← (1 − η)·θ_T + η·θ` after each step | [`Teacher::after_step`] |
//! | [`TrustRegion`] | logits `z_ref + α·(z_cur − z_ref)` | follows the student |
//! | [`Conditioned`] | any of the above, fed the question with privileged information | as its strategy |
//!
//! ```no_run
//! use burn::backend::{Autodiff, Flex};
//! use opd_teachers::{FrozenInitial, Request, TeacherSupport, Teacher};
//!
//! type B = Autodiff<Flex>;
//! # fn run(student: opd_policy::Llama<B>, batch: opd_policy::SequenceBatch) -> opd_teachers::Result<()> {
//! let teacher = FrozenInitial::new(&student);
//! let request = Request::new(TeacherSupport::Logits, 1.0)?;
//! let target = teacher.outputs(&student, &batch, &request)?.into_target(1.0)?;
//! # Ok(()) }
//! ```

mod ema;
mod error;
mod external;
mod frozen;
mod output;
pub mod privileged;
pub mod remote;
mod teacher;
mod trust_region;

pub use ema::Ema;
pub use error::{Result, TeacherError};
pub use external::External;
pub use frozen::{Current, FrozenInitial};
pub use opd_policy::params::EmaRate;
pub use output::{Request, TeacherOutput, TeacherSupport};
pub use privileged::{Conditioned, ConditionedOutput, Privileged, PrivilegedTemplate};
pub use remote::{Remote, RemoteOptions};
pub use teacher::Teacher;
pub use trust_region::TrustRegion;
