//! `[parallel]`: workers and nodes of a data-parallel run.

use std::path::PathBuf;

use opd_trainers::parallel::{NodeSecret, Topology};
use serde::{Deserialize, Serialize};

/// The environment variable holding a multi-node run's secret when the run file names no
/// `parallel.secret_file`.
pub const NODE_SECRET_VARIABLE: &str = "OPD_NODE_SECRET";

/// Data parallelism: `workers` per process (one device each) on `nodes` processes; each step
/// equals the step one worker takes on the whole batch (`docs/parallel.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    /// Workers in each process: threads on the CPU backend, devices `0..workers` on a GPU
    /// backend. Default 1.
    pub workers: usize,
    /// Processes (nodes), each with `workers` workers. Default 1.
    pub nodes: usize,
    /// This process's index among the nodes (usually given with `--node-rank`); node 0 writes
    /// the run folder and starts the orchestrator. Default 0.
    pub node_rank: usize,
    /// Node 0's address as the other nodes reach it, `HOST:PORT` (several nodes only): node
    /// 0 listens on that address (that interface only), the others connect to it.
    pub orchestrator: Option<String>,
    /// A file holding the run's secret (several nodes only; at least 16 bytes, the same on
    /// every node): each node proves it to node 0 before its values are trusted. Default: the
    /// environment's `OPD_NODE_SECRET`. Only the path is written to the run folder.
    pub secret_file: Option<PathBuf>,
    /// How long a worker waits for the others at an exchange before the run stops with an
    /// error naming who did not arrive (node 0's evaluations and checkpoints happen while the
    /// others wait). Default 600.
    pub timeout_seconds: u64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            nodes: 1,
            node_rank: 0,
            orchestrator: None,
            secret_file: None,
            timeout_seconds: 600,
        }
    }
}

impl ParallelConfig {
    /// One worker in one process: no exchange at all.
    pub fn is_single(&self) -> bool {
        self.workers == 1 && self.nodes == 1
    }

    /// `Err` naming the first setting that cannot work.
    pub(super) fn check(&self) -> std::result::Result<(), String> {
        let p = self;
        if p.workers == 0 || p.nodes == 0 || p.timeout_seconds == 0 {
            return Err(
                "`parallel.workers`, `parallel.nodes` and `parallel.timeout_seconds` \
                        must be at least 1"
                    .into(),
            );
        }
        if p.node_rank >= p.nodes {
            return Err(format!(
                "`parallel.node_rank` = {}: expected below `parallel.nodes` = {}",
                p.node_rank, p.nodes
            ));
        }
        if p.nodes > 1 && p.orchestrator.is_none() {
            return Err(format!(
                "`parallel.nodes` = {}: several nodes need `parallel.orchestrator`, node 0's \
                 address (\"HOST:PORT\")",
                p.nodes
            ));
        }
        Ok(())
    }

    /// The topology of this process's group; over several nodes, with the run's secret read
    /// from `secret_file` or `OPD_NODE_SECRET` (`Err` names the setting).
    pub fn topology(&self) -> std::result::Result<Topology, String> {
        let secret = match (self.nodes > 1, &self.secret_file) {
            (false, _) => None,
            (true, Some(path)) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("`parallel.secret_file` = {}: {e}", path.display()))?;
                let secret = NodeSecret::new(&bytes)
                    .map_err(|e| format!("`parallel.secret_file` = {}: {e}", path.display()))?;
                Some(secret)
            }
            (true, None) => match std::env::var_os(NODE_SECRET_VARIABLE) {
                Some(value) => Some(
                    NodeSecret::new(value.as_encoded_bytes())
                        .map_err(|e| format!("{NODE_SECRET_VARIABLE}: {e}"))?,
                ),
                None => {
                    return Err(format!(
                        "`parallel.nodes` = {}: several nodes need the run's secret, the same \
                         on every node: set {NODE_SECRET_VARIABLE} or `parallel.secret_file`",
                        self.nodes
                    ));
                }
            },
        };
        Ok(Topology {
            local_workers: self.workers,
            nodes: self.nodes,
            node_rank: self.node_rank,
            orchestrator: self.orchestrator.clone(),
            secret,
            timeout: std::time::Duration::from_secs(self.timeout_seconds),
        })
    }
}
