//! The records of a run's `metrics.jsonl`, one JSON object per line: written by `opd train`,
//! read back by the curves, `opd compare` and `--resume`.

use opd_trainers::StepMetrics;
use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A training step (`"kind": "train"`): the step's metrics.
    Train(Box<TrainRecord>),
    /// A held-out evaluation (`"kind": "eval"`).
    Eval(EvalRecord),
}

/// A training step's line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// What the step measured.
    #[serde(flatten)]
    pub metrics: StepMetrics,
    /// The tokens the run's budget has counted after this step (generated; for SFT, the
    /// references trained on).
    pub generated_tokens_total: u64,
}

/// A held-out evaluation's line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Steps taken before it.
    pub step: usize,
    /// The tokens the run's budget had counted.
    pub generated_tokens_total: u64,
    /// Fraction of answers correct (greedy).
    pub accuracy: f64,
    /// Mean reward.
    pub reward: f64,
    /// Answers graded.
    pub answers: usize,
}

impl Record {
    /// The step of a train record, or the steps taken before an evaluation.
    pub fn step(&self) -> usize {
        match self {
            Self::Train(r) => r.metrics.step,
            Self::Eval(r) => r.step,
        }
    }

    /// The budget's tokens at this record.
    pub fn generated_tokens_total(&self) -> u64 {
        match self {
            Self::Train(r) => r.generated_tokens_total,
            Self::Eval(r) => r.generated_tokens_total,
        }
    }

    /// The step's metrics, for a train record.
    pub fn train(&self) -> Option<&StepMetrics> {
        match self {
            Self::Train(r) => Some(&r.metrics),
            Self::Eval(_) => None,
        }
    }

    /// The evaluation, for an eval record.
    pub fn eval(&self) -> Option<&EvalRecord> {
        match self {
            Self::Eval(r) => Some(r),
            Self::Train(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_train_line_round_trips_and_nan_comes_back_as_nan() {
        let mut metrics = StepMetrics {
            step: 3,
            loss: f64::NAN,
            divergence_mean: Some(0.25),
            ..StepMetrics::default()
        };
        metrics.loss_parts.insert("pg".into(), f64::NAN);
        let record = Record::Train(Box::new(TrainRecord {
            metrics,
            generated_tokens_total: 120,
        }));
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.contains("\"kind\":\"train\""), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap();
        let m = back.train().unwrap();
        assert_eq!((m.step, back.generated_tokens_total()), (3, 120));
        assert!(m.loss.is_nan() && m.loss_parts["pg"].is_nan());
        assert_eq!(m.divergence_mean, Some(0.25));
    }
}
