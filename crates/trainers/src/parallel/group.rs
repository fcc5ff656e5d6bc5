//! The workers of one process, and what they know of each other: the topology, and a board
//! where a failed worker posts its error so the others stop at once.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use burn::tensor::backend::Backend;

use super::ParallelError;
use super::handshake::NodeSecret;

/// Where the workers of a run are.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Workers in this process, one device each.
    pub local_workers: usize,
    /// Processes (nodes) in the run, each with `local_workers` workers.
    pub nodes: usize,
    /// This process's index among the nodes (0 writes the run folder).
    pub node_rank: usize,
    /// Node 0's address, `HOST:PORT`: node 0 listens there (that address only) and the
    /// other nodes connect to it; needed when `nodes > 1`.
    pub orchestrator: Option<String>,
    /// The secret every node proves before node 0 trusts it (and node 0 proves to it); needed
    /// when `nodes > 1`. Never written to the run folder.
    pub secret: Option<NodeSecret>,
    /// How long a worker waits for the others at an exchange before it stops with
    /// [`ParallelError::Timeout`].
    pub timeout: Duration,
}

impl Topology {
    /// One process with `workers` workers.
    pub fn local(workers: usize, timeout: Duration) -> Self {
        Self {
            local_workers: workers,
            nodes: 1,
            node_rank: 0,
            orchestrator: None,
            secret: None,
            timeout,
        }
    }

    /// Workers in the whole run: `nodes · local_workers`.
    pub fn workers(&self) -> usize {
        self.nodes * self.local_workers
    }

    /// The global rank of local worker `local`: `node_rank · local_workers + local`.
    pub fn rank(&self, local: usize) -> usize {
        self.node_rank * self.local_workers + local
    }

    fn check(&self) -> Result<(), ParallelError> {
        let bad = |field, problem: &str| {
            Err(ParallelError::Setting {
                field,
                problem: problem.into(),
            })
        };
        if self.local_workers == 0 {
            return bad("parallel.workers", "must be at least 1");
        }
        if self.nodes == 0 {
            return bad("parallel.nodes", "must be at least 1");
        }
        if self.node_rank >= self.nodes {
            return bad("parallel.node_rank", "must be below parallel.nodes");
        }
        if self.nodes > 1 && self.orchestrator.is_none() {
            return bad(
                "parallel.orchestrator",
                "several nodes need node 0's address (HOST:PORT)",
            );
        }
        if self.nodes > 1 && self.secret.is_none() {
            return bad(
                "parallel.secret_file",
                "several nodes need a shared secret: the environment's OPD_NODE_SECRET or a \
                 file named by parallel.secret_file, the same on every node",
            );
        }
        if self.timeout.is_zero() {
            return bad("parallel.timeout_seconds", "must be above 0");
        }
        Ok(())
    }
}

/// The first failure of a worker of this process, and how many exchanges each local worker
/// has entered (to name the ones that never arrived).
#[derive(Debug, Default)]
pub(crate) struct Board {
    pub failed: Option<(usize, String)>,
    pub entered: Vec<u64>,
}

/// The workers of this process on backend `B` (burn's collective layer keeps one group per
/// backend type and process).
#[derive(Debug)]
pub struct Group<B: Backend> {
    topology: Topology,
    board: Mutex<Board>,
    _backend: PhantomData<B>,
}

impl<B: Backend> Group<B> {
    /// A group of `topology`'s local workers; forgets whatever an earlier group on `B` left
    /// in burn's collective layer.
    pub fn new(topology: Topology) -> Result<Arc<Self>, ParallelError> {
        topology.check()?;
        burn_collective::reset_collective::<B>();
        Ok(Arc::new(Self {
            board: Mutex::new(Board {
                failed: None,
                entered: vec![0; topology.local_workers],
            }),
            topology,
            _backend: PhantomData,
        }))
    }

    /// Where the workers are.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub(crate) fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts `rank`'s failure (the first one is kept) and wakes every local worker blocked
    /// in an exchange.
    pub(crate) fn fail(&self, rank: usize, message: String) {
        {
            let mut board = self.board();
            if board.failed.is_none() {
                board.failed = Some((rank, message));
            }
        }
        burn_collective::reset_collective::<B>();
    }

    /// The posted failure of a worker other than `rank`.
    pub(crate) fn failure_of_another(&self, rank: usize) -> Option<ParallelError> {
        match &self.board().failed {
            Some((r, message)) if *r != rank => Some(ParallelError::PeerFailed {
                rank: *r,
                message: message.clone(),
            }),
            _ => None,
        }
    }
}
