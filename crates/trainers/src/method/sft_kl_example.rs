//! The method `docs/development.md` adds as its example (SFT with a KL anchor), compiled here
//! so the page's code stays true: the block between the header and the tests is the page's,
//! character for character (checked below).

use burn::tensor::Tensor;
use opd_divergences::TrainingBackend;
use opd_policy::{Llama, Trainable};
use opd_teachers::{FrozenInitial, Teacher, TeacherSupport};
use serde::{Deserialize, Serialize};

use super::{Forward, Loss, Method, MicroBatch, Prepared, Rollouts, Targets};
use crate::check::non_negative;
use crate::error::Result;
use crate::losses::{grpo, sft};
use crate::settings::{MethodSettings, SamplingConfig};

// docs/development.md, "Adding a method":
/// SFT with a KL anchor: `ℓ_t = −log p_θ(y*_t) + λ k3(π_θ ‖ π_0)_t`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftKlConfig {
    /// `λ`. Default 0.1.
    pub kl_weight: f64,
}
impl Default for SftKlConfig {
    fn default() -> Self {
        Self { kl_weight: 0.1 }
    }
}

impl MethodSettings for SftKlConfig {
    fn name(&self) -> &'static str {
        "sft_kl"
    }
    fn samples(&self) -> bool {
        false
    }
    fn validate(&self, _: &SamplingConfig) -> Result<()> {
        non_negative("objective.kl_weight", self.kl_weight)
    }
}

pub(super) struct SftKl<B: TrainingBackend, M: Trainable<B>> {
    weight: f64,
    initial: FrozenInitial<B, M>,
}

struct SftKlTargets<B: TrainingBackend> {
    weight: f64,
    initial: Tensor<B, 2>,
}

impl<B: TrainingBackend> Targets<B> for SftKlTargets<B> {
    fn loss(&self, student: &Forward<B>) -> Result<Loss<B>> {
        let lp = student.log_probs()?;
        let kl = grpo::k3_to_reference(lp.clone(), self.initial.clone());
        let mut loss = Loss::single("nll", sft::nll(lp));
        loss.parts.push(("kl", kl.clone().mul_scalar(self.weight)));
        loss.divergence = Some(kl);
        Ok(loss)
    }
}

impl<B: TrainingBackend, M: Trainable<B>> Method<B, M> for SftKl<B, M> {
    fn rollouts(&self) -> Rollouts {
        Rollouts::References
    }

    fn targets(&self, student: &M, micro: &MicroBatch<'_, B>) -> Result<Prepared<B>> {
        let request = micro.request(TeacherSupport::SampledToken, 1.0)?;
        let initial = self.initial.outputs(student, micro.batch, &request)?;
        let targets = SftKlTargets {
            weight: self.weight,
            initial: initial.into_token_log_probs(1.0)?,
        };
        Ok(Prepared::on_responses(micro, targets))
    }
}
// end of the page's block

#[test]
fn the_pages_example_is_this_file() {
    let page = include_str!("../../../../docs/development.md");
    let file = include_str!("sft_kl_example.rs");
    let start = file
        .find("// docs/development.md, \"Adding a method\":\n")
        .unwrap();
    let body = &file[start..file.find("// end of the page's block").unwrap()];
    let body = body.split_once('\n').unwrap().1;
    assert!(
        page.contains(&format!("```rust\n{body}```")),
        "the page's block differs"
    );
}

#[test]
fn the_example_method_builds_and_checks_its_weight() {
    use burn::backend::{Autodiff, Flex};
    let student =
        Llama::<Autodiff<Flex>>::init(&opd_policy::LlamaConfig::tiny(16), 0, &Default::default());
    let method = SftKl {
        weight: 0.1,
        initial: FrozenInitial::new(&student),
    };
    assert!(matches!(method.rollouts(), Rollouts::References));
    let config = SftKlConfig::default();
    assert_eq!((config.name(), config.samples()), ("sft_kl", false));
    assert!(config.validate(&SamplingConfig::default()).is_ok());
    assert!(
        SftKlConfig { kl_weight: -1.0 }
            .validate(&SamplingConfig::default())
            .is_err()
    );
}
