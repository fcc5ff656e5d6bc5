//! One worker's line to burn's collective layer: its operations run on a thread of their own,
//! so the worker can wait with a deadline and notice a failed peer while burn blocks.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{
    AllReduceStrategy, CollectiveConfig, CollectiveError, PeerId, ReduceOperation,
};

use super::ParallelError;
use super::group::{Group, Topology};
use super::nodes::{NodeLost, Star};

enum Job<B: Backend> {
    Register(B::Device),
    AllReduce(FloatTensor<B>),
    Finish,
}

/// Why an operation of the exchange thread failed.
enum Failure {
    Collective(CollectiveError),
    Node(NodeLost),
}

type Answer<B> = Result<Option<FloatTensor<B>>, Failure>;

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

/// What the exchange thread of local worker `local` holds: its peer id, device, and (worker
/// 0 of each node, in a run over several) its end of the star between nodes.
struct Exchanger<B: Backend> {
    topology: Topology,
    local: usize,
    peer: PeerId,
    device: Option<B::Device>,
    star: Option<Star>,
}

impl<B: Backend> Exchanger<B> {
    fn run(&mut self, job: Job<B>) -> Answer<B> {
        let t = &self.topology;
        let locally = t.local_workers > 1;
        match job {
            Job::Register(device) => {
                self.device = Some(device.clone());
                if locally {
                    let config = CollectiveConfig::default()
                        .with_num_devices(t.local_workers)
                        .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
                    burn_collective::register::<B>(self.peer, device, config)
                        .map_err(Failure::Collective)?;
                }
                if t.nodes > 1 && self.local == 0 {
                    let (Some(address), Some(secret)) = (&t.orchestrator, &t.secret) else {
                        unreachable!("Topology::check requires both for several nodes")
                    };
                    let deadline = Instant::now() + t.timeout;
                    self.star = Some(
                        Star::join(address, secret, (t.node_rank, t.nodes), deadline, t.timeout)
                            .map_err(Failure::Node)?,
                    );
                }
                Ok(None)
            }
            Job::AllReduce(tensor) => {
                let node_sum = if locally {
                    burn_collective::all_reduce::<B>(self.peer, tensor, ReduceOperation::Sum)
                        .map_err(Failure::Collective)?
                } else {
                    tensor
                };
                if t.nodes == 1 {
                    return Ok(Some(node_sum));
                }
                // Worker 0 of each node adds the nodes' sums; its node's workers receive the
                // total from it.
                let total = match &mut self.star {
                    Some(star) => {
                        let host = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(node_sum))
                            .into_data()
                            .to_vec::<f32>()
                            .expect("an all-reduce of f32");
                        let n = host.len();
                        let total = star.sum(host).map_err(Failure::Node)?;
                        let device = self.device.as_ref().expect("registered first");
                        let total = Tensor::<B, 1>::from_data(TensorData::new(total, [n]), device)
                            .into_primitive()
                            .tensor();
                        Some(total)
                    }
                    None => None,
                };
                if !locally {
                    return Ok(total);
                }
                burn_collective::broadcast::<B>(self.peer, total)
                    .map(Some)
                    .map_err(Failure::Collective)
            }
            Job::Finish => {
                if locally {
                    burn_collective::finish_collective::<B>(self.peer)
                        .map_err(Failure::Collective)?;
                }
                self.star = None;
                Ok(None)
            }
        }
    }
}

impl<B: Backend> Link<B> {
    /// Registers local worker `local` on `device` with burn's collective layer and, in a run
    /// over several nodes, joins the star between them (waits until every worker has).
    pub fn register(
        group: Arc<Group<B>>,
        local: usize,
        device: B::Device,
    ) -> Result<Self, ParallelError> {
        let topology = group.topology().clone();
        let rank = topology.rank(local);
        let (jobs, inbox) = mpsc::channel::<Job<B>>();
        let (reply, answers) = mpsc::channel::<Answer<B>>();
        let mut exchanger = Exchanger::<B> {
            topology,
            local,
            peer: PeerId::from(rank),
            device: None,
            star: None,
        };
        std::thread::Builder::new()
            .name(format!("opd-exchange-{rank}"))
            .spawn(move || {
                for job in inbox {
                    if reply.send(exchanger.run(job)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| ParallelError::Collective {
                rank,
                what: "start",
                problem: e.to_string(),
            })?;
        let mut link = Self {
            group,
            local,
            rank,
            jobs,
            answers,
            entered: 0,
        };
        link.exchange(Job::Register(device), "register")?;
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
                Ok(Err(failure)) => {
                    let error =
                        self.group
                            .failure_of_another(self.rank)
                            .unwrap_or_else(|| match failure {
                                Failure::Collective(e) => collective(format!("{e:?}")),
                                Failure::Node(lost) => ParallelError::NodeLost {
                                    rank: self.rank,
                                    node: lost.node,
                                    problem: lost.problem,
                                },
                            });
                    self.group.fail(self.rank, error.to_string());
                    return Err(error);
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
            (true, true) => {
                let others: Vec<String> = (0..topology.nodes)
                    .filter(|&n| n != topology.node_rank)
                    .map(|n| n.to_string())
                    .collect();
                format!(
                    "every worker of node {} reached it: a worker of node(s) {} died or hangs",
                    topology.node_rank,
                    others.join(", ")
                )
            }
            (true, false) => "every worker reached it: burn's collective layer hangs".into(),
        }
    }
}
