//! # opd-cli
//!
//! The library behind the `opd` command: run files ([`config::RunConfig`], TOML), what they
//! name built ([`setup`]), a run driven to the end with metrics, evaluations, checkpoints and
//! curves ([`run::train`]), learning-curve plots ([`plot`], and [`bands`] for arms over seeds),
//! and a scoring server for remote
//! teachers ([`server`]). The examples use it too.

pub mod bands;
pub mod config;
pub mod error;
pub mod folder;
mod lead;
pub mod parallel;
pub mod plot;
pub mod record;
pub mod run;
pub mod samples;
pub mod server;
pub mod setup;

pub use config::RunConfig;
pub use error::{CliError, Result};

/// The Rust examples of the README and of `docs/`, compiled (and run, unless marked `no_run`:
/// those read SmolLM2 from `models/`) as doctests.
#[cfg(doctest)]
pub mod documentation {
    #[doc = include_str!("../../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../../docs/divergences.md")]
    pub struct Divergences;
    #[doc = include_str!("../../../docs/environments.md")]
    pub struct Environments;
    #[doc = include_str!("../../../docs/policy.md")]
    pub struct Policy;
    #[doc = include_str!("../../../docs/rollout.md")]
    pub struct Rollout;
    #[doc = include_str!("../../../docs/teachers.md")]
    pub struct Teachers;
}
