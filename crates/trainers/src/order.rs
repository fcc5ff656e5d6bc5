//! The order in which tasks are drawn: a seeded shuffle per epoch.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Draws task indices in a fresh seeded permutation each epoch: an order rebuilt with the same
/// seed and advanced by the same number of draws continues identically.
#[derive(Debug, Clone)]
pub(crate) struct TaskOrder {
    len: usize,
    seed: u64,
    position: usize,
    order: Vec<usize>,
}

impl TaskOrder {
    /// The order over `len` tasks (`len > 0`) for `seed`.
    pub fn new(len: usize, seed: u64) -> Self {
        let mut order = Self {
            len,
            seed,
            position: 0,
            order: Vec::new(),
        };
        order.shuffle(0);
        order
    }

    fn shuffle(&mut self, epoch: usize) {
        self.order = (0..self.len).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37));
        self.order.shuffle(&mut rng);
    }

    /// Tasks drawn so far.
    pub fn drawn(&self) -> usize {
        self.position
    }

    /// Continues as an order that has drawn `position` tasks (from the start of the epoch it
    /// is in).
    pub fn skip_to(&mut self, position: usize) {
        self.position = position;
        self.shuffle(position / self.len);
    }

    /// The next `n` task indices.
    pub fn take(&mut self, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let within = self.position % self.len;
                if within == 0 && self.position > 0 {
                    self.shuffle(self.position / self.len);
                }
                self.position += 1;
                self.order[within]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_is_a_permutation_and_the_order_is_reproducible() {
        let mut a = TaskOrder::new(5, 3);
        let drawn = a.take(15);
        for epoch in drawn.chunks(5) {
            let mut e = epoch.to_vec();
            e.sort();
            assert_eq!(e, vec![0, 1, 2, 3, 4]);
        }
        let mut b = TaskOrder::new(5, 3);
        assert_eq!(b.take(7), drawn[..7]);
        assert_eq!(b.take(8), drawn[7..]);
        for position in [0, 4, 5, 6, 12] {
            let mut c = TaskOrder::new(5, 3);
            c.skip_to(position);
            assert_eq!(c.take(15 - position), drawn[position..]);
        }
    }
}
