//! One worker's replica of the run: its rank, its device and the exchanges a step needs.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ParallelError;
use super::group::Group;
use super::link::Link;
use super::wire::{offsets, pack, unpack};

/// One worker of a data-parallel run: give it to [`crate::TrainerBuilder::replica`] and the
/// trainer shares each step with the other workers (see [`crate::parallel`]).
pub struct Replica<B: Backend> {
    link: Link<B>,
    workers: usize,
    device: B::Device,
}

impl<B: Backend> Replica<B> {
    /// Local worker `local` of `group`, on `device`, registered with the others.
    pub(crate) fn join(
        group: Arc<Group<B>>,
        local: usize,
        device: B::Device,
    ) -> Result<Self, ParallelError> {
        let workers = group.topology().workers();
        let link = Link::register(group, local, device.clone())?;
        Ok(Self {
            link,
            workers,
            device,
        })
    }

    /// This worker's rank, `0..workers`; rank 0 writes the run folder.
    pub fn rank(&self) -> usize {
        self.link.rank()
    }

    /// Workers in the run.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// This worker's device.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// This worker's contiguous share of `n` items: `[r·n/W, (r+1)·n/W)`.
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        let (r, w) = (self.rank(), self.workers);
        r * n / w..(r + 1) * n / w
    }

    /// `Σ_workers tensor` on every worker.
    pub(crate) fn sum(
        &mut self,
        tensor: Tensor<B, 1>,
        what: &'static str,
    ) -> Result<Tensor<B, 1>, ParallelError> {
        let sum = self
            .link
            .all_reduce(tensor.into_primitive().tensor(), what)?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(sum)))
    }

    /// `Σ_workers values` (host floats) on every worker.
    fn sum_host(
        &mut self,
        values: Vec<f32>,
        what: &'static str,
    ) -> Result<Vec<f32>, ParallelError> {
        let n = values.len();
        let tensor = Tensor::from_data(TensorData::new(values, [n]), &self.device);
        let sum = self.sum(tensor, what)?;
        Ok(sum
            .into_data()
            .to_vec::<f32>()
            .expect("an all-reduce keeps f32"))
    }

    /// Every worker's `value`, in rank order, on every worker (two all-reduces: the sizes,
    /// then the bytes, MessagePack).
    pub(crate) fn gather<T: Serialize + DeserializeOwned>(
        &mut self,
        value: &T,
        what: &'static str,
    ) -> Result<Vec<T>, ParallelError> {
        let bytes = rmp_serde::to_vec(value).map_err(|e| self.refused(what, e.to_string()))?;
        let mut lengths = vec![0.0f32; self.workers];
        let rank = self.rank();
        // Lengths as two exact halves (a float holds integers below 2^24 exactly).
        lengths[rank] = (bytes.len() % (1 << 20)) as f32;
        let mut high = vec![0.0f32; self.workers];
        high[rank] = (bytes.len() >> 20) as f32;
        lengths.extend(high);
        let summed = self.sum_host(lengths, what)?;
        let lengths = gathered_lengths(&summed, rank, bytes.len())
            .map_err(|problem| self.refused(what, problem))?;
        let w = self.workers;
        let at = offsets(&lengths);
        let total = at[w - 1] + lengths[w - 1].div_ceil(2);
        let mut floats = vec![0.0f32; total];
        let packed = pack(&bytes);
        floats[at[rank]..at[rank] + packed.len()].copy_from_slice(&packed);
        let gathered = self.sum_host(floats, what)?;
        (0..w)
            .map(|r| {
                let end = at[r] + lengths[r].div_ceil(2);
                let bytes = unpack(&gathered[at[r]..end], lengths[r])
                    .map_err(|problem| self.refused(what, format!("worker {r}: {problem}")))?;
                rmp_serde::from_slice(&bytes).map_err(|e| self.refused(what, e.to_string()))
            })
            .collect()
    }

    /// Whether any worker says `flag`.
    pub(crate) fn any(&mut self, flag: bool, what: &'static str) -> Result<bool, ParallelError> {
        Ok(self.sum_host(vec![f32::from(u8::from(flag))], what)?[0] > 0.0)
    }

    /// Checks that every worker holds the same `value` (a fingerprint of a config, a step,
    /// weights); else [`ParallelError::Disagree`] listing each rank's.
    pub fn agree(&mut self, value: u64, what: &'static str) -> Result<(), ParallelError> {
        let all = self.gather(&value, what)?;
        if all.iter().all(|&v| v == all[0]) {
            return Ok(());
        }
        let detail = all
            .iter()
            .enumerate()
            .map(|(r, v)| format!("worker {r}: {v:016x}"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(ParallelError::Disagree { what, detail })
    }

    /// Leaves the group once the run is over on every worker.
    pub fn finish(self) -> Result<(), ParallelError> {
        self.link.finish()
    }

    fn refused(&self, what: &'static str, problem: String) -> ParallelError {
        ParallelError::Collective {
            rank: self.rank(),
            what,
            problem,
        }
    }
}

/// Most bytes one gather may hold, all workers together.
const MAX_GATHER_BYTES: usize = 1 << 30;

/// Every worker's byte count from the summed halves (`[low; W] ++ [high; W]`), checked before
/// anything is allocated from them: whole numbers in range, this worker's own count where it
/// put it, at most [`MAX_GATHER_BYTES`] in all.
fn gathered_lengths(summed: &[f32], rank: usize, own: usize) -> Result<Vec<usize>, String> {
    let w = summed.len() / 2;
    let whole = |v: f32, below: f32| v.is_finite() && v >= 0.0 && v < below && v.fract() == 0.0;
    let mut lengths = Vec::with_capacity(w);
    for r in 0..w {
        let (low, high) = (summed[r], summed[w + r]);
        if !whole(low, (1 << 20) as f32) || !whole(high, (1 << 20) as f32) {
            return Err(format!(
                "worker {r} announced a size of ({low}, {high}) halves"
            ));
        }
        lengths.push(low as usize + ((high as usize) << 20));
    }
    if lengths[rank] != own {
        return Err(format!(
            "this worker's size came back as {} bytes, not {own}",
            lengths[rank]
        ));
    }
    let total: usize = lengths.iter().sum();
    if total > MAX_GATHER_BYTES {
        return Err(format!(
            "the workers announced {total} bytes in all, more than {MAX_GATHER_BYTES}"
        ));
    }
    Ok(lengths)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::gathered_lengths;

    #[test]
    fn sizes_a_peer_announces_are_checked_before_anything_is_allocated() {
        assert_eq!(
            gathered_lengths(&[5.0, 7.0, 0.0, 1.0], 0, 5),
            Ok(vec![5, 7 + (1 << 20)])
        );
        for bad in [
            [5.0, 3e9, 0.0, 0.0],
            [5.0, 0.5, 0.0, 0.0],
            [5.0, -1.0, 0.0, 0.0],
            [5.0, f32::NAN, 0.0, 0.0],
        ] {
            assert!(gathered_lengths(&bad, 0, 5).is_err(), "{bad:?}");
        }
        assert!(
            gathered_lengths(&[6.0, 1.0, 0.0, 0.0], 0, 5)
                .unwrap_err()
                .contains("came back")
        );
        let huge = [5.0, 0.0, 0.0, 2000.0];
        assert!(
            gathered_lengths(&huge, 0, 5)
                .unwrap_err()
                .contains("more than")
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::parallel::fuzz_config())]

        /// Sizes summed from any floats are whole, in range, this worker's own where it put
        /// them, and at most the gather's cap in all; or refused.
        #[test]
        fn announced_sizes_from_any_floats_are_bounded_or_refused(
            summed in proptest::collection::vec(
                prop_oneof![
                    proptest::prelude::any::<f32>(),
                    (0u32..(1 << 20)).prop_map(|v| v as f32),
                ],
                2..9,
            ),
        ) {
            let w = summed.len() / 2;
            let own = summed[0] as usize;
            if let Ok(lengths) = gathered_lengths(&summed[..2 * w], 0, own) {
                proptest::prop_assert_eq!(lengths.len(), w);
                proptest::prop_assert_eq!(lengths[0], own);
                proptest::prop_assert!(lengths.iter().sum::<usize>() <= super::MAX_GATHER_BYTES);
            }
        }

        /// Any floats as a worker's gathered bytes unpack to at most the announced length, or
        /// are refused.
        #[test]
        fn gathered_rows_from_any_floats_unpack_or_are_refused(
            floats in proptest::collection::vec(proptest::prelude::any::<f32>(), 0..32),
            len in 0usize..80,
        ) {
            if let Ok(bytes) = super::unpack(&floats, len) {
                proptest::prop_assert!(bytes.len() <= len);
                proptest::prop_assert!(floats.iter().all(|f| f.fract() == 0.0));
            }
        }
    }
}
