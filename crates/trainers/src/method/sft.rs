//! SFT: `ℓ_t = −log p_θ(y*_t | x, y*_<t)` on the tasks' reference answers, token mean.

use opd_divergences::TrainingBackend;
use opd_policy::Trainable;
use opd_tasks::Task;
use serde::{Deserialize, Serialize};

use super::{Forward, LinearIn, Loss, Method, MicroBatch, Prepared, Rollouts, Targets};
use crate::error::Result;
use crate::losses::sft;
use crate::settings::{MethodSettings, SamplingConfig};
use opd_divergences::Reduction;

/// SFT: `L = −(1/N) Σ_{b,t} log p_θ(y*_t | x, y*_<t)` over the reference answer tokens only.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {}

impl MethodSettings for SftConfig {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn samples(&self) -> bool {
        false
    }

    fn validate(&self, _sampling: &SamplingConfig) -> Result<()> {
        Ok(())
    }
}

/// The SFT method: rows are the references, the loss their NLL.
pub(crate) struct Sft;

/// SFT fixes nothing before the update.
struct Nll;

impl<B: TrainingBackend> Targets<B> for Nll {
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>> {
        Ok(Loss::single("nll", sft::nll(student.log_probs()?)))
    }
}

impl<B: TrainingBackend, M: Trainable<B>> Method<B, M> for Sft {
    fn rollouts(&self) -> Rollouts {
        Rollouts::References
    }

    fn linear_in(&self) -> Option<(LinearIn, Reduction)> {
        Some((LinearIn::LogProbs, Reduction::TokenMean))
    }

    fn check_task(&self, task: &Task) -> Option<String> {
        task.reference
            .is_none()
            .then(|| "sft needs a reference solution or demonstration".into())
    }

    fn targets(&self, _student: &M, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
        Ok(Prepared::on_responses(micro, Nll))
    }
}
