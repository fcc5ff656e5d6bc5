//! `opd train` on several workers ([`opd_trainers::parallel`]): this process's workers, one
//! thread and device each; worker 0 of node 0 drives the run and writes its folder, the others
//! follow its steps. Across nodes, node 0 is the hub the others connect to.

use opd_divergences::TrainingBackend;
use std::sync::atomic::AtomicUsize;

use opd_trainers::checkpoint::latest_checkpoint;
use opd_trainers::parallel::{Group, Replica, WorkerFailure, worker_device};
use opd_trainers::{Flow, Trainer};

use crate::config::RunConfig;
use crate::error::{CliError, Result};
use crate::lead::{Built, RunReport, build, lead};

/// Trains `config` with this process's workers of its `[parallel]` topology; returns worker
/// 0's report (on node 0: the run's).
pub(crate) fn train<B: TrainingBackend>(
    config: &RunConfig,
    resume: bool,
    device: &B::Device,
    stop: &AtomicUsize,
) -> Result<RunReport> {
    let parallel = &config.parallel;
    let topology = parallel.topology().map_err(|problem| CliError::Run {
        path: config.output.dir.clone(),
        problem,
    })?;
    let group = Group::<B::InnerBackend>::new(topology.clone())?;
    let devices: Vec<B::Device> = (0..parallel.workers)
        .map(|local| worker_device::<B>(device, local))
        .collect();
    let results = group.run(&devices, |replica| {
        let device = replica.device().clone();
        if replica.rank() == 0 {
            lead::<B>(config, resume, &device, stop, Some(replica))
        } else {
            follow::<B>(config, resume, &device, replica)
        }
    });
    let mut report = None;
    for (local, result) in results.into_iter().enumerate() {
        match result {
            Ok(r) if local == 0 => report = Some(r),
            Ok(_) => {}
            Err(failure) if local == 0 => {
                return Err(match failure {
                    WorkerFailure::Failed(e) => e,
                    WorkerFailure::Panicked(message) => CliError::Run {
                        path: config.output.dir.clone(),
                        problem: format!("worker {} panicked: {message}", topology.rank(0)),
                    },
                });
            }
            Err(failure) => tracing::warn!("worker {}: {failure}", topology.rank(local)),
        }
    }
    Ok(report.expect("worker 0 reported"))
}

/// A worker other than the run's writer: the same trainer, the same checkpoint resumed (read
/// from the run folder, which every node must see), the writer's steps taken with it.
fn follow<B: TrainingBackend>(
    config: &RunConfig,
    resume: bool,
    device: &B::Device,
    replica: Replica<B::InnerBackend>,
) -> Result<RunReport> {
    let rank = replica.rank();
    let Built { mut trainer, .. } = build::<B>(config, device, Some(replica))?;
    let dir = &config.output.dir;
    if resume {
        let checkpoint = latest_checkpoint(dir).ok_or_else(|| CliError::Run {
            path: dir.clone(),
            problem: format!(
                "worker {rank} finds no checkpoint to resume from (every node reads the run \
                 folder node 0 writes: it must be on a shared file system)"
            ),
        })?;
        trainer.resume(&checkpoint)?;
    }
    trainer.train_with(|_: &Trainer<B>, _| Ok::<_, CliError>(Flow::Continue))?;
    trainer.leave_group();
    Ok(RunReport {
        dir: dir.clone(),
        steps: trainer.steps_done(),
        generated_tokens: trainer.tokens_spent().generated,
        evaluation: None,
        skipped_updates: 0,
    })
}
