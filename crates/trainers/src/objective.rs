//! The training objective: which method a run trains with, tagged by `method` in a run file,
//! and the one place it is matched to build the method.

use opd_divergences::TrainingBackend;
use opd_policy::Trainable;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::method::{
    GrpoConfig, Method, OpdConfig, OpsdConfig, Parts, SdftConfig, SdpoConfig, SftConfig, grpo, opd,
    opsd, sdft, sdpo, sft,
};
use crate::settings::MethodSettings;

/// The training objective, tagged by `method` in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Objective {
    /// Supervised fine-tuning on the tasks' reference answers.
    Sft(SftConfig),
    /// Group-relative policy optimization on the environment's rewards.
    Grpo(GrpoConfig),
    /// On-policy distillation from a teacher model.
    Opd(OpdConfig),
    /// On-policy self-distillation with the reference solution in the teacher's context.
    Opsd(OpsdConfig),
    /// Self-distillation fine-tuning with a demonstration in the teacher's context.
    Sdft(SdftConfig),
    /// Self-distillation policy optimization with the environment's feedback.
    Sdpo(SdpoConfig),
}

impl Objective {
    /// The method an objective names; the one place the objective is matched. An error when the
    /// method cannot run: OPD without a teacher, a teacher given to SFT or GRPO.
    pub(crate) fn method<B: TrainingBackend, M: Trainable<B>>(
        &self,
        parts: Parts<'_, B, M>,
    ) -> Result<Box<dyn Method<B, M>>> {
        let no_teacher = |parts: &Parts<'_, B, M>| match parts.teachers.is_empty() {
            false => Err(TrainError::Config {
                field: "teacher",
                value: "a teacher model".into(),
                expected: "none: SFT and GRPO train without a teacher",
            }),
            true => Ok(()),
        };
        Ok(match self {
            Objective::Sft(_) => {
                no_teacher(&parts)?;
                Box::new(sft::Sft)
            }
            Objective::Grpo(c) => {
                no_teacher(&parts)?;
                Box::new(grpo::Grpo::new(c.clone(), parts.student))
            }
            Objective::Opd(c) => Box::new(opd::Opd::new(c.clone(), parts)?),
            Objective::Opsd(c) => Box::new(opsd::Opsd::new(c.clone(), parts)?),
            Objective::Sdft(c) => Box::new(sdft::Sdft::new(c.clone(), parts)?),
            Objective::Sdpo(c) => Box::new(sdpo::Sdpo::new(c.clone(), parts)?),
        })
    }

    /// The method's settings behind one interface (the config side's one match).
    pub fn settings(&self) -> &dyn MethodSettings {
        match self {
            Self::Sft(c) => c,
            Self::Grpo(c) => c,
            Self::Opd(c) => c,
            Self::Opsd(c) => c,
            Self::Sdft(c) => c,
            Self::Sdpo(c) => c,
        }
    }

    /// The method's name as written in configs and metrics.
    pub fn name(&self) -> &'static str {
        self.settings().name()
    }

    /// Answers sampled per prompt.
    pub fn group_size(&self) -> usize {
        self.settings().group_size()
    }
}

/// `Objective::Sft(config)`, `Objective::Opd(config)`…: a method's config is its objective.
macro_rules! objective_from {
    ($($config:ident => $variant:ident),* $(,)?) => {$(
        impl From<$config> for Objective {
            fn from(config: $config) -> Self {
                Self::$variant(config)
            }
        }
    )*};
}

objective_from!(
    SftConfig => Sft,
    GrpoConfig => Grpo,
    OpdConfig => Opd,
    OpsdConfig => Opsd,
    SdftConfig => Sdft,
    SdpoConfig => Sdpo,
);
