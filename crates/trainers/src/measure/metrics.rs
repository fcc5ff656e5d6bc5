//! The metrics of one training step, named as TRL and verl users know them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Seconds (or tokens per second) of each phase of a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Student sampling (no graph).
    #[serde(deserialize_with = "nan_if_null")]
    pub rollout: f64,
    /// Teacher and reference scoring (no graph).
    #[serde(deserialize_with = "nan_if_null")]
    pub teacher: f64,
    /// Student forward and backward.
    #[serde(deserialize_with = "nan_if_null")]
    pub train: f64,
    /// Gradient clipping, the AdamW step and the teacher's update.
    #[serde(deserialize_with = "nan_if_null")]
    pub optimizer: f64,
}

/// Everything measured in one step. `None` where a metric does not apply to the method.
///
/// As JSON (a line of `metrics.jsonl`), a NaN or infinite number is written `null` (JSON has
/// no NaN) and read back as NaN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step index (0-based).
    pub step: usize,
    /// Learning rate of the step's first update.
    #[serde(deserialize_with = "nan_if_null")]
    pub learning_rate: f64,
    /// The loss (mean over the step's optimizer updates).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Its parts (`pg`, `kl`, `distill`, `trust_region`, `nll`), unweighted.
    #[serde(deserialize_with = "nan_if_null_values")]
    pub loss_parts: BTreeMap<String, f64>,
    /// Mean per-token divergence to the teacher (the k3 estimate of the reverse KL for
    /// sampled-token forms), over counted tokens.
    pub divergence_mean: Option<f64>,
    /// Its maximum.
    pub divergence_max: Option<f64>,
    /// Mean per-token entropy of the student (nats).
    #[serde(deserialize_with = "nan_if_null")]
    pub entropy: f64,
    /// Mean per-token entropy of the teacher (full-logit teachers).
    pub teacher_entropy: Option<f64>,
    /// Mean response length (tokens).
    #[serde(deserialize_with = "nan_if_null")]
    pub response_length_mean: f64,
    /// Longest response.
    pub response_length_max: usize,
    /// Fraction of responses cut by `max_new_tokens`.
    #[serde(deserialize_with = "nan_if_null")]
    pub clipped_fraction: f64,
    /// Mean environment reward.
    #[serde(deserialize_with = "nan_if_null")]
    pub reward_mean: f64,
    /// Fraction of correct answers.
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    /// Fraction of groups with all-equal rewards (zero advantage), TRL's `frac_reward_zero_std`.
    pub frac_reward_zero_std: Option<f64>,
    /// Fraction of tokens with `ρ < 1 − ε_low` and `A < 0` (GRPO).
    pub clip_ratio_low: Option<f64>,
    /// Fraction of tokens with `ρ > 1 + ε_high` and `A > 0` (GRPO).
    pub clip_ratio_high: Option<f64>,
    /// Mean importance ratio `π_θ/π_old` over counted tokens.
    pub ratio_mean: Option<f64>,
    /// Its minimum.
    pub ratio_min: Option<f64>,
    /// Its maximum.
    pub ratio_max: Option<f64>,
    /// Global gradient norm before clipping (last update of the step).
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Mean `|S ∩ T| / k` of the student's and teacher's top-k sets.
    pub topk_overlap: Option<f64>,
    /// Mean probability mass of the shared set under the student.
    pub shared_mass_student: Option<f64>,
    /// Mean probability mass of the shared set under the teacher.
    pub shared_mass_teacher: Option<f64>,
    /// Rows masked out for lack of privileged information (SDPO).
    pub rows_without_privilege: usize,
    /// Updates dropped for a non-finite loss or gradient.
    pub skipped_updates: usize,
    /// Response tokens generated.
    pub generated_tokens: usize,
    /// Response tokens trained on (summed over updates).
    pub trained_tokens: usize,
    /// Seconds per phase.
    pub seconds: Phases,
    /// Tokens per second per phase (optimizer: trained tokens over its seconds).
    pub tokens_per_second: Phases,
    /// Seconds the step waited on the other workers of a data-parallel run (rows, counts,
    /// gradients, telemetry; part of the phases' seconds); absent for one worker.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exchange_seconds: f64,
    /// Collapse-watch and non-finite warnings raised this step.
    pub warnings: Vec<String>,
    /// Per teacher, in a run with several (OPD's `[[teachers]]`): the divergence and top-k
    /// overlap at the rows each scored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub teachers: BTreeMap<String, TeacherMetrics>,
}

/// One teacher's share of a step's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeacherMetrics {
    /// Response tokens it scored that the loss counted.
    pub tokens: usize,
    /// Mean per-token divergence to it over those tokens.
    pub divergence_mean: Option<f64>,
    /// Mean `|S ∩ T| / k` of the student's and its top-k sets (first mini-batch).
    pub topk_overlap: Option<f64>,
    /// Mean probability mass of the shared set under it.
    pub shared_mass_teacher: Option<f64>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// A number written `null` (a NaN or infinity serialized to JSON) read back as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`nan_if_null`] for each value of a map.
fn nan_if_null_values<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let map = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

/// Mean, min and max of a stream of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Running {
    sum: f64,
    count: usize,
    min: f64,
    max: f64,
}

impl Default for Running {
    fn default() -> Self {
        Self {
            sum: 0.0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Running {
    pub fn add(&mut self, value: f64) {
        self.sum += value;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds the values `mask` selects.
    pub fn add_masked(&mut self, values: &[f32], mask: &[bool]) {
        for (v, _) in values.iter().zip(mask).filter(|(_, m)| **m) {
            self.add(*v as f64);
        }
    }

    /// Adds another stream's values.
    pub fn merge(&mut self, other: &Running) {
        self.sum += other.sum;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }
}
