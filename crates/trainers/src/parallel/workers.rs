//! Running a group's workers: one thread per local worker, each with its [`Replica`] joined to
//! the [`Group`], failures posted to the group so the others stop.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use burn::tensor::backend::{Backend, Device, DeviceId};

use super::ParallelError;
use super::group::Group;
use super::replica::Replica;

/// Why a worker of [`Group::run`] ended without a value.
#[derive(Debug)]
pub enum WorkerFailure<E> {
    /// The work returned an error.
    Failed(E),
    /// The work panicked; the panic's message.
    Panicked(String),
}

impl<E: std::fmt::Display> std::fmt::Display for WorkerFailure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(e) => write!(f, "{e}"),
            Self::Panicked(message) => write!(f, "panicked: {message}"),
        }
    }
}

impl<B: Backend> Group<B> {
    /// Runs `work` on every local worker, each on a thread of its own with its replica
    /// joined to the group on `devices[local]`; returns each worker's result, in local order.
    /// A worker that fails or panics posts its error, and the others stop at their next
    /// exchange with [`ParallelError::PeerFailed`] naming it.
    pub fn run<T: Send, E: std::fmt::Display + From<ParallelError> + Send>(
        self: &Arc<Self>,
        devices: &[B::Device],
        work: impl Fn(Replica<B>) -> Result<T, E> + Sync,
    ) -> Vec<Result<T, WorkerFailure<E>>> {
        assert_eq!(
            devices.len(),
            self.topology().local_workers,
            "one device per local worker"
        );
        std::thread::scope(|scope| {
            let handles: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(local, device)| {
                    let work = &work;
                    let rank = self.topology().rank(local);
                    std::thread::Builder::new()
                        .name(format!("opd-worker-{rank}"))
                        .spawn_scoped(scope, move || {
                            let outcome = catch_unwind(AssertUnwindSafe(|| {
                                Replica::join(Arc::clone(self), local, device.clone())
                                    .map_err(E::from)
                                    .and_then(work)
                            }));
                            let outcome = match outcome {
                                Ok(Ok(value)) => Ok(value),
                                Ok(Err(e)) => Err(WorkerFailure::Failed(e)),
                                Err(panic) => Err(WorkerFailure::Panicked(panic_message(&*panic))),
                            };
                            if let Err(failure) = &outcome {
                                self.fail(rank, failure.to_string());
                            }
                            outcome
                        })
                        .expect("a worker thread starts")
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|p| Err(WorkerFailure::Panicked(panic_message(&*p))))
                })
                .collect()
        })
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The device of local worker `local`: the `local`-th of `first`'s kind after `first`
/// (wrapping around), or `first` for every worker where there is one device (the CPU).
pub fn worker_device<B: Backend>(first: &B::Device, local: usize) -> B::Device {
    let id = first.to_id();
    let count = B::device_count(id.type_id);
    if count <= 1 {
        return first.clone();
    }
    let index = (id.index_id as usize + local) % count;
    B::Device::from_id(DeviceId::new(id.type_id, index as u16))
}
