//! # opd-trainers
//!
//! SFT, GRPO, on-policy distillation (OPD) and self-distillation (OPSD, SDFT, SDPO) on one
//! training loop. A [`Trainer`] step reads like a recipe:
//!
//! 1. **prompts**: the next tasks in a seeded order;
//! 2. **rollouts**: the student samples `G` answers each on its inner backend (no graph, the
//!    fast kernels), with a fresh seed each step; the sampler's exact τ = 1 log-probs are
//!    `π_old`;
//! 3. **rewards and feedback** from the [`Environment`];
//! 4. **advantages** (GRPO, OPD's advantage form) and **teacher outputs** (OPD's model, or the
//!    student reading privileged context for OPSD / SDFT / SDPO), computed once per batch as
//!    constants;
//! 5. **loss**: the method's per-token loss from [`losses`] per micro-batch, gradients accumulated;
//! 6. **optimizer**: global-norm clipping, AdamW with warmup + cosine, `mini_batches` steps per
//!    rollout batch;
//! 7. **teacher update** (EMA) after every optimizer step;
//! 8. **metrics** ([`StepMetrics`]), the collapse watch and non-finite guards.
//!
//! | method | loss per token |
//! |---|---|
//! | SFT | `−log p_θ(y*_t)` |
//! | GRPO | `−min(ρ A, clip(ρ, 1−ε_low, 1+ε_high) A) + β k3(π_θ‖π_ref)` |
//! | OPD | `ρ (log π_θ − log π_T) + β_tr k3(π_old‖π_θ)`, or `−ρ A_t`, or `JSD_β(p_T‖p_θ)` |
//! | OPSD | `JSD_β(p_T(·|x, y*) ‖ p_θ(·|x))`, β = 0.5 |
//! | SDFT | `KL(p_θ(·|x) ‖ p_T(·|x, demo))` |
//! | SDPO | `min(sg ρ, 2) · JSD_α(p_T(·|x, f, demo) ‖ p_θ(·|x))` on the student's top-100 + tail |

mod builder;
mod check;
pub mod checkpoint;
pub mod config;
mod device;
mod error;
mod fingerprint;
mod grads;
pub mod losses;
mod measure;
mod method;
mod micro;
mod named;
mod objective;
mod order;
pub mod parallel;
pub mod prelude;
mod rows;
mod schedule;
mod settings;
mod state;
mod trainer;
mod update;

pub use builder::TrainerBuilder;
pub use config::{
    CollapseWatch, DistillForm, GrpoConfig, MethodSettings, Objective, OnNonFinite, OpdConfig,
    OpdForm, OpsdConfig, OptimizerConfig, OutputHead, Reduction, SampledTokenBaseline,
    SamplingConfig, SdftConfig, SdpoConfig, SftConfig, TeacherWeights, TrainConfig,
    TrustRegionEstimator,
};
pub use error::{Result, TrainError};
pub use measure::metrics::{Phases, StepMetrics, TeacherMetrics};
pub use schedule::learning_rate;
pub use state::{OptimizerRecord, RunProgress, SavedState, TokensSpent, TrainerState};
pub use trainer::{Flow, MAX_SKIPPED_STEPS_IN_A_ROW, Trainer};
