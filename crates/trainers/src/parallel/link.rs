//! One worker's line to burn's collective layer: its operations run on a thread of their own,
//! so the worker can wait with a deadline and notice a failed peer while burn blocks.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn_collective::{
    AllReduceStrategy, CollectiveConfig, CollectiveError, PeerId, ReduceOperation,
};

use super::ParallelError;
use super::group::Group;

enum Job<B: Backend> {
    Register(B::Device, CollectiveConfig),
    AllReduce(FloatTensor<B>),
    Finish,
}

type Answer<B> = Result<Option<FloatTensor<B>>, CollectiveError>;

/// A worker's line to its peers: `all_reduce` with a deadline.
pub(crate) struct Link<B: Backend> {
    group: Arc<Group<B>>,
    local: usize,
    rank: usize,
    jobs: Sender<Job<B>>,
    answers: Receiver<Answer<B>>,
    entered: u64,
}

/// How often a waiting worker looks at the group's board.
const POLL: Duration = Duration::from_millis(20);

impl<B: Backend> Link<B> {
    /// Registers local worker `local` on `device` with burn's collective layer (waits until
    /// every worker of the run has).
    pub fn register(
        group: Arc<Group<B>>,
        local: usize,
        device: B::Device,
    ) -> Result<Self, ParallelError> {
        let topology = group.topology().clone();
        let rank = topology.rank(local);
        let peer = PeerId::from(rank);
        let (jobs, inbox) = mpsc::channel::<Job<B>>();
        let (reply, answers) = mpsc::channel::<Answer<B>>();
        std::thread::Builder::new()
            .name(format!("opd-exchange-{rank}"))
            .spawn(move || {
                for job in inbox {
                    let answer = match job {
                        Job::Register(device, config) => {
                            burn_collective::register::<B>(peer, device, config).map(|()| None)
                        }
                        Job::AllReduce(tensor) => {
                            burn_collective::all_reduce::<B>(peer, tensor, ReduceOperation::Sum)
                                .map(Some)
                        }
                        Job::Finish => burn_collective::finish_collective::<B>(peer).map(|()| None),
                    };
                    if reply.send(answer).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| ParallelError::Collective {
                rank,
                what: "start",
                problem: e.to_string(),
            })?;
        let mut config = CollectiveConfig::default()
            .with_num_devices(topology.local_workers)
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
        if let Some(network) = &topology.network {
            let address =
                |s: String| burn_communication::Address::from_str(&s).expect("infallible");
            config = config
                .with_num_nodes(topology.nodes as u32)
                .with_global_address(address(format!("ws://{}", network.orchestrator)))
                .with_node_address(address(format!(
                    "ws://{}:{}",
                    network.node_host, network.node_port
                )))
                .with_data_service_port(network.node_port)
                .with_global_all_reduce_strategy(AllReduceStrategy::Ring);
        }
        let mut link = Self {
            group,
            local,
            rank,
            jobs,
            answers,
            entered: 0,
        };
        link.exchange(Job::Register(device, config), "register")?;
        Ok(link)
    }

    /// The global rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// `Σ_workers tensor`, the same on every worker.
    pub fn all_reduce(
        &mut self,
        tensor: FloatTensor<B>,
        what: &'static str,
    ) -> Result<FloatTensor<B>, ParallelError> {
        let sum = self.exchange(Job::AllReduce(tensor), what)?;
        Ok(sum.expect("an all-reduce answers a tensor"))
    }

    /// Leaves the collective (at the end of a run every worker finished).
    pub fn finish(mut self) -> Result<(), ParallelError> {
        self.exchange(Job::Finish, "finish").map(|_| ())
    }

    /// Runs `job` on the exchange thread and waits for its answer, a failed peer or the
    /// deadline.
    fn exchange(
        &mut self,
        job: Job<B>,
        what: &'static str,
    ) -> Result<Option<FloatTensor<B>>, ParallelError> {
        if let Some(failed) = self.group.failure_of_another(self.rank) {
            return Err(failed);
        }
        self.entered += 1;
        self.group.board().entered[self.local] = self.entered;
        let collective = |problem: String| ParallelError::Collective {
            rank: self.rank,
            what,
            problem,
        };
        self.jobs
            .send(job)
            .map_err(|_| collective("the exchange thread stopped".into()))?;
        let timeout = self.group.topology().timeout;
        let deadline = Instant::now() + timeout;
        loop {
            match self.answers.recv_timeout(POLL) {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => {
                    return Err(self
                        .group
                        .failure_of_another(self.rank)
                        .unwrap_or_else(|| collective(format!("{e:?}"))));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(collective("the exchange thread stopped".into()));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(failed) = self.group.failure_of_another(self.rank) {
                return Err(failed);
            }
            if Instant::now() >= deadline {
                let error = ParallelError::Timeout {
                    rank: self.rank,
                    exchange: self.entered,
                    what,
                    seconds: timeout.as_secs(),
                    missing: self.missing(),
                };
                self.group.fail(self.rank, error.to_string());
                return Err(error);
            }
        }
    }

    /// The workers that did not reach this exchange, as far as this process sees.
    fn missing(&self) -> String {
        let topology = self.group.topology();
        let behind: Vec<String> = self
            .group
            .board()
            .entered
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n < self.entered)
            .map(|(local, _)| topology.rank(local).to_string())
            .collect();
        match (behind.is_empty(), topology.nodes > 1) {
            (false, _) => format!("worker(s) {} never reached it", behind.join(", ")),
            (true, true) => format!(
                "every worker of node {} reached it: a worker of another node died or hangs",
                topology.node_rank
            ),
            (true, false) => "every worker reached it: burn's collective layer hangs".into(),
        }
    }
}
