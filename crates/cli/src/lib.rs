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

/// The README's Rust examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExamples;
