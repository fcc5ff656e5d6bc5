//! Data parallelism over burn's collective operations: several workers (threads of one process,
//! one device each, and processes on several nodes joined by burn's orchestrator) train one
//! student, and every step equals the step one worker takes on the whole batch.
//!
//! How a step is shared (see [`crate::Trainer::step`]):
//! - every worker draws the same prompts from the seeded order and samples the prompts of its
//!   contiguous share (whole groups: a prompt's `G` answers stay on one worker, so
//!   group-relative advantages need no exchange); sampling streams are keyed by
//!   `(seed, prompt, answer)`, so a row is the same whichever worker samples it;
//! - the rows are gathered, so every worker holds the step's rows in the one-worker order;
//! - each mini-batch's rows are split between the workers, which score their rows with the
//!   teacher and compute the loss and gradients of their part; the token and sequence counts
//!   of the `Normalizer` are summed first, so each part is `Σ_{own tokens} ℓ_t / N_global`;
//! - the gradients are summed (`g = Σ_w g_w`, the one-worker gradient up to float rounding),
//!   so clipping, AdamW and the teacher's EMA move identically on every worker;
//! - the step's telemetry is gathered, so metrics and the collapse watch agree.

mod group;
mod handshake;
mod link;
mod nodes;
mod replica;
mod wire;
mod workers;

pub use group::{Group, Topology};
pub use handshake::NodeSecret;
pub use replica::Replica;
pub use workers::{WorkerFailure, worker_device};

use thiserror::Error;

/// What stops a data-parallel run.
#[derive(Debug, Error, Clone)]
pub enum ParallelError {
    /// Another worker stopped with an error (or panicked): this one stops too.
    #[error("worker {rank} failed: {message}")]
    PeerFailed {
        /// The failed worker's rank.
        rank: usize,
        /// Its error.
        message: String,
    },
    /// An exchange did not complete in time: a worker died or hangs.
    #[error(
        "worker {rank}: exchange #{exchange} ({what}) got no answer within {seconds} s; {missing}"
    )]
    Timeout {
        /// The waiting worker.
        rank: usize,
        /// Exchanges this worker entered so far.
        exchange: u64,
        /// What was exchanged.
        what: &'static str,
        /// The configured timeout.
        seconds: u64,
        /// Who did not arrive, as far as this process can see.
        missing: String,
    },
    /// burn's collective layer refused or failed an operation.
    #[error("worker {rank}: collective {what}: {problem}")]
    Collective {
        /// The worker.
        rank: usize,
        /// The operation.
        what: &'static str,
        /// burn's error.
        problem: String,
    },
    /// Another node's connection was lost or it sent something wrong.
    #[error("worker {rank}: lost node {node}: {problem}")]
    NodeLost {
        /// The worker that noticed.
        rank: usize,
        /// The node.
        node: usize,
        /// What happened.
        problem: String,
    },
    /// The workers do not hold the same run (another config, step or weights).
    #[error("the workers disagree on {what}: {detail}")]
    Disagree {
        /// What was compared.
        what: &'static str,
        /// Each rank's value.
        detail: String,
    },
    /// The topology cannot be set up.
    #[error("parallel setting `{field}`: {problem}")]
    Setting {
        /// The setting, as written in a run file (`parallel.workers`).
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The fuzz tests' settings for what a peer sends: 512 cases a property, on a fixed seed.
#[cfg(test)]
fn fuzz_config() -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(39),
        ..Default::default()
    }
}
