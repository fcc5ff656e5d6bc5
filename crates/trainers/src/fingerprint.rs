//! Fingerprints: of a trainer's state, for the workers of a data-parallel run to compare (equal
//! on replicas that hold the same weights and optimizer state), and of a run's tasks, for a
//! resumed run to check it draws from the same ones.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::Optimizer;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use opd_tasks::Task;

use crate::state::{OptimizerRecord, StudentOptimizer};

/// CRC-32 of the values of every parameter of `model` that requires a gradient, in module order
/// (the ids of parameters differ between replicas, their order does not), with their count.
pub(crate) fn weights<B: AutodiffBackend, M: Module<B>>(model: &M) -> u64 {
    struct Hash(crc32fast::Hasher, u64);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if !value.is_require_grad() {
                return;
            }
            let data = value.inner().into_data();
            self.0.update(&data.bytes);
            self.1 += data.num_elements() as u64;
        }
    }
    let mut hash = Hash(crc32fast::Hasher::new(), 0);
    model.visit(&mut hash);
    (u64::from(hash.0.finalize()) << 32) | (hash.1 & 0xffff_ffff)
}

/// CRC-32 of AdamW's state (both moments and the step count of every parameter it holds, in
/// module order).
pub(crate) fn optimizer<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    optimizer: &StudentOptimizer<B, M>,
) -> u64 {
    struct Hash<B: AutodiffBackend> {
        record: OptimizerRecord<B>,
        hasher: crc32fast::Hasher,
        held: u64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Hash<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(record) = self.record.remove(&param.id) else {
                return;
            };
            let state = record.into_state::<D>();
            let m = state.momentum;
            self.hasher.update(&(m.time as u64).to_le_bytes());
            for moment in [m.moment_1, m.moment_2] {
                self.hasher.update(&moment.into_data().bytes);
            }
            self.held += 1;
        }
    }
    let mut hash = Hash {
        record: optimizer.to_record(),
        hasher: crc32fast::Hasher::new(),
        held: 0,
    };
    model.visit(&mut hash);
    (u64::from(hash.hasher.finalize()) << 32) | (hash.held & 0xffff_ffff)
}

/// A fingerprint of `tasks`: their count and the CRC-32 of their JSON lines. A resumed run
/// must draw from the same tasks, in the same order, as the saved one.
pub fn tasks_fingerprint(tasks: &[Task]) -> String {
    let mut hasher = crc32fast::Hasher::new();
    for task in tasks {
        hasher.update(
            serde_json::to_string(task)
                .expect("a task serializes")
                .as_bytes(),
        );
        hasher.update(b"\n");
    }
    format!("{} tasks, crc32 {:08x}", tasks.len(), hasher.finalize())
}
