//! Advantages on the tokens of a micro-batch: GRPO's group-relative ones, shared by the
//! methods that use them (GRPO, SDPO's blend, OPD's advantage form), and PPO's clipped
//! surrogate on them.

use burn::tensor::Tensor;
use opd_divergences::{DivergenceBackend, TrainingBackend};

use super::{Clipped, Forward, MicroBatch, SequenceAdvantages};
use crate::error::Result;
use crate::losses::grpo;

/// Group-normalized advantages on each token, with their host copy for the clip counts.
pub(super) struct Advantages<B: TrainingBackend> {
    pub values: Tensor<B, 2>,
    pub host: Vec<f32>,
}

impl<B: TrainingBackend> Advantages<B> {
    /// Each row's sequence advantage on each of its tokens.
    pub fn of_rows(micro: &MicroBatch<'_, B>) -> Self {
        let (values, host) = micro
            .per_token(|_, row, len| vec![micro.advantages.get(row).copied().unwrap_or(0.0); len]);
        Self { values, host }
    }

    /// PPO's clipped surrogate `−min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A)` per token,
    /// with the tokens where the clip binds counted.
    pub fn clipped(
        &self,
        student: &Forward<B>,
        low: f64,
        high: f64,
    ) -> Result<(Tensor<B, 2>, Clipped)>
    where
        B: DivergenceBackend,
    {
        let lp = student.log_probs()?;
        let mut clipped = Clipped::default();
        let counted = student.counted_host.iter();
        for ((r, a), _) in student
            .ratio_host()?
            .iter()
            .zip(&self.host)
            .zip(counted)
            .filter(|(_, m)| **m)
        {
            let (r, a) = (*r as f64, *a as f64);
            clipped.low += usize::from(r < 1.0 - low && a < 0.0);
            clipped.high += usize::from(r > 1.0 + high && a > 0.0);
            clipped.tokens += 1;
        }
        let loss = grpo::clipped_surrogate(lp, student.old.clone(), self.values.clone(), low, high);
        Ok((loss, clipped))
    }
}

/// GRPO's group-normalized advantages of a step.
pub(super) fn group_relative(rewards: &[f64], group: usize, scale: bool) -> SequenceAdvantages {
    let a = grpo::group_advantages(rewards, group, scale);
    SequenceAdvantages {
        values: a.advantages,
        zero_std: Some((a.zero_std_groups, a.groups)),
    }
}
