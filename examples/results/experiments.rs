//! The experiments: each a list of arms (a label and a run file) on the same task, model and
//! budget, and what its table compares them to.

use std::path::Path;

use opd_cli::RunConfig;
use opd_cli::config::{ArithmeticData, DataConfig, TeacherFrom, TeacherSource};
use opd_cli::setup::splits;
use opd_tasks::Task;
use opd_tasks::data::{Arithmetic, Operation};
use opd_trainers::prelude::Divergence;
use opd_trainers::{Objective, OpdConfig, OpdForm, OpsdConfig, SftConfig, TeacherWeights};

use crate::runs::{RUNS, finished, run_file, with_budget};

/// The experiments by name, with the claim each tests.
pub const NAMES: [(&str, &str); 6] = [
    (
        "opd-teacher",
        "OPD reaches a teacher with a fraction of RL's samples; full vocabulary beats sampled token",
    ),
    (
        "reach-teacher",
        "the same, OPD (reverse KL) alone, at a budget long enough to reach the teacher",
    ),
    (
        "opsd-grpo",
        "OPSD is several times more token-efficient than GRPO",
    ),
    ("forgetting", "on-policy training forgets less than SFT"),
    (
        "self-teacher",
        "a frozen, EMA or trust-region self-teacher is stable where the current weights are not",
    ),
    (
        "diagnostics",
        "a working OPD run concentrates its mass on a small shared top-k set",
    ),
];

/// One arm: a label (also its runs' folder name) and its run file (seed, budget and folder are
/// set per run).
pub struct Arm {
    pub label: &'static str,
    pub config: RunConfig,
    /// Held-out evaluations every this many steps.
    pub eval_every: usize,
    /// The arm's own budget of generated tokens, in place of the experiment's (an arm stopped
    /// early, at another arm's gain).
    pub budget: Option<u64>,
}

/// What an arm's accuracy is measured against in the table.
pub enum Target {
    /// Tokens to reach 90 % of this teacher accuracy.
    Teacher(f64),
    /// Tokens to reach the named arm's mean final accuracy.
    Arm(&'static str),
}

/// A task the base model can do, measured before and after training (forgetting).
pub struct OldTask {
    pub name: &'static str,
    pub tasks: Vec<Task>,
}

impl OldTask {
    /// The file that caches a model's accuracy on it: `{prefix}-{name}-{questions}.txt` (a
    /// change of the questions' number measures again).
    pub fn cache_name(&self, prefix: &str) -> String {
        format!("{prefix}-{}-{}.txt", self.name, self.tasks.len())
    }
}

/// An experiment's arms, its target and, for forgetting, the old tasks measured after each run.
pub struct Experiment {
    pub arms: Vec<Arm>,
    pub target: Option<Target>,
    pub old_tasks: Vec<OldTask>,
}

/// The experiment `name`, or `None`.
pub fn experiment(name: &str) -> Option<Experiment> {
    Some(match name {
        "opd-teacher" => opd_teacher(),
        "reach-teacher" => reach_teacher(),
        "opsd-grpo" => opsd_grpo(),
        "forgetting" => forgetting(),
        "self-teacher" => self_teacher(),
        "diagnostics" => diagnostics(),
        _ => return None,
    })
}

/// The arithmetic run files' evaluation cadence: GRPO, OPD and OPSD spend ~300 tokens a step
/// (8 answers), SFT ~110 (8 references).
const EVERY_DISTILL: usize = 3;
const EVERY_SFT: usize = 6;

/// The teacher of `opd-teacher` and `opsd-grpo`: SmolLM2 + LoRA trained by SFT on the worked
/// answers of `a ± b` for 4 000 reference tokens (seed 0), merged; and its held-out accuracy.
fn sft_teacher() -> (std::path::PathBuf, f64) {
    let mut sft = run_file("configs/opsd.toml");
    sft.train.objective = Objective::Sft(SftConfig::default());
    let dir = Path::new(RUNS).join("teacher-sft-4000-s0");
    let teacher = with_budget(sft, dir.clone(), 0, 4_000, 10);
    let run = finished("teacher (SFT, 4 000 tokens)", &teacher);
    (dir.join("final"), run.final_accuracy())
}

/// `config` with the model at `path` as its teacher (OPD's, or the model that reads the
/// privileged context in place of a self-teacher).
fn with_teacher(mut config: RunConfig, path: &Path) -> RunConfig {
    config.teacher = Some(TeacherSource {
        name: None,
        from: TeacherFrom::file(path),
    });
    config
}

fn opd(form: OpdForm, teacher: &Path) -> RunConfig {
    let mut config = with_teacher(run_file("configs/opsd.toml"), teacher);
    config.train.objective = Objective::Opd(OpdConfig {
        form,
        ..OpdConfig::default()
    });
    config
}

fn opd_reverse_kl(teacher: &Path) -> Arm {
    Arm {
        label: "OPD reverse KL (full)",
        config: opd(
            OpdForm::Divergence {
                divergence: Divergence::ReverseKl,
                teacher_top_k: None,
            },
            teacher,
        ),
        eval_every: EVERY_DISTILL,
        budget: None,
    }
}

/// The GRPO arm's label.
const GRPO: &str = "GRPO (1 question × 8 answers)";

/// GRPO (`configs/grpo.toml`) at the distillation arms' shape: one question × 8 answers a step,
/// so that it makes as many optimizer updates per generated token as they do (the run file's
/// 4 questions × 8 answers made 2 updates in 2 000 tokens, the first in warmup).
fn grpo() -> Arm {
    let mut config = run_file("configs/grpo.toml");
    config.train.prompts_per_step = 1;
    Arm {
        label: GRPO,
        config,
        eval_every: EVERY_DISTILL,
        budget: None,
    }
}

/// OPSD (`configs/opsd.toml`: JSD β 0.5, full vocabulary) with the self-teacher's weights.
fn opsd(label: &'static str, weights: TeacherWeights) -> Arm {
    let mut config = run_file("configs/opsd.toml");
    config.train.objective = Objective::Opsd(OpsdConfig {
        teacher: weights,
        ..OpsdConfig::default()
    });
    Arm {
        label,
        config,
        eval_every: EVERY_DISTILL,
        budget: None,
    }
}

/// Claims 1 and 3: a fresh student distilled from the SFT teacher by OPD in four forms (full
/// reverse KL first: the arm the others are compared with), against GRPO.
fn opd_teacher() -> Experiment {
    let (teacher, accuracy) = sft_teacher();
    let arms = vec![
        opd_reverse_kl(&teacher),
        Arm {
            label: "OPD forward KL (full)",
            config: opd(
                OpdForm::Divergence {
                    divergence: Divergence::ForwardKl,
                    teacher_top_k: None,
                },
                &teacher,
            ),
            eval_every: EVERY_DISTILL,
            budget: None,
        },
        Arm {
            label: "OPD surrogate (sampled)",
            config: opd(OpdForm::surrogate(), &teacher),
            eval_every: EVERY_DISTILL,
            budget: None,
        },
        Arm {
            label: "OPD advantage (sampled)",
            config: opd(
                OpdForm::Advantage {
                    discount: 0.0,
                    reward_weight: 0.0,
                },
                &teacher,
            ),
            eval_every: EVERY_DISTILL,
            budget: None,
        },
        grpo(),
    ];
    Experiment {
        arms,
        target: Some(Target::Teacher(accuracy)),
        old_tasks: Vec::new(),
    }
}

/// Claim 1 at a larger budget: `opd-teacher`'s full reverse KL arm alone (GRPO's runs at
/// this budget cost more than this machine's session had left; see `docs/results.md`).
fn reach_teacher() -> Experiment {
    let (teacher, accuracy) = sft_teacher();
    Experiment {
        arms: vec![opd_reverse_kl(&teacher)],
        target: Some(Target::Teacher(accuracy)),
        old_tasks: Vec::new(),
    }
}

/// Claim 2: OPSD with SmolLM2 as its own teacher (frozen, reading the worked answer), OPSD
/// whose privileged reader is the SFT teacher, against GRPO.
fn opsd_grpo() -> Experiment {
    let (teacher, _) = sft_teacher();
    let self_taught = opsd("OPSD (self-teacher, frozen)", TeacherWeights::FrozenInitial);
    let mut trained = opsd(
        "OPSD (SFT teacher reads the reference)",
        TeacherWeights::FrozenInitial,
    );
    trained.config = with_teacher(trained.config, &teacher);
    Experiment {
        arms: vec![self_taught, trained, grpo()],
        target: Some(Target::Arm(GRPO)),
        old_tasks: Vec::new(),
    }
}

/// The old tasks of `forgetting`, each graded by the last number of the answer: `a × b` with
/// operands 0–12 asked plainly ("What is 7*8?"; 100 questions, a neighbour of the new task,
/// none in its training data), and general-knowledge facts with a number for an answer
/// ([`crate::facts`]; unrelated to it).
fn old_tasks() -> Vec<OldTask> {
    let multiplication = DataConfig::Arithmetic(ArithmeticData {
        generator: Arithmetic {
            max_operand: 12,
            operations: vec![Operation::Multiply],
            seed: 7,
            template: "What is {question}?".into(),
            reference: "{question} = {answer}".into(),
        },
        train_tasks: 1,
        test_tasks: 100,
    });
    let (_, multiplication) = splits(&multiplication).expect("the multiplication questions");
    vec![
        OldTask {
            name: "multiplication",
            tasks: multiplication.tasks,
        },
        OldTask {
            name: "facts",
            tasks: crate::facts::tasks(),
        },
    ]
}

/// Claim 4: learn `a ± b` in the `####` format by SFT on the references (to the budget, and
/// stopped at about OPD's new-task gain) and by OPD from the SFT teacher; the old tasks
/// measured before and after. (SDFT, the claim's own method, learns nothing of the new task
/// at 135 M: `self-teacher` and claim 2 show why.)
fn forgetting() -> Experiment {
    let (teacher, _) = sft_teacher();
    let mut sft = run_file("configs/opsd.toml");
    sft.train.objective = Objective::Sft(SftConfig::default());
    let arms = vec![
        Arm {
            label: "SFT",
            config: sft.clone(),
            eval_every: EVERY_SFT,
            budget: None,
        },
        // SFT at about OPD's new-task gain: the teacher's SFT run (seed 0) was at 0.63
        // held-out after 1 053 tokens; OPD reverse KL ends at 0.63 after 2 000.
        Arm {
            label: "SFT, stopped at 1 000 tokens",
            config: sft,
            eval_every: EVERY_SFT,
            budget: Some(1_000),
        },
        opd_reverse_kl(&teacher),
    ];
    Experiment {
        arms,
        target: None,
        old_tasks: old_tasks(),
    }
}

/// Claim 5: OPSD with each self-teacher (frozen initial, current weights, EMA η 0.05, trust
/// region α 0.05: the SDPO code's number for both).
fn self_teacher() -> Experiment {
    Experiment {
        arms: vec![
            opsd("OPSD (self-teacher, frozen)", TeacherWeights::FrozenInitial),
            opsd("OPSD (self-teacher, current)", TeacherWeights::Current),
            opsd("OPSD (self-teacher, EMA 0.05)", TeacherWeights::Ema(0.05)),
            opsd(
                "OPSD (self-teacher, trust region 0.05)",
                TeacherWeights::TrustRegion(0.05),
            ),
        ],
        target: None,
        old_tasks: Vec::new(),
    }
}

/// Claim 6: the shared top-k mass of a working and of failing OPD runs with the same teacher
/// (the SFT teacher, full reverse KL): at the learning rate of every other arm (5e-4) and at
/// two higher ones; the teacher's entropy beside it. (The runs of the other experiments, each
/// with its own teacher, are in their tables.)
fn diagnostics() -> Experiment {
    let (teacher, _) = sft_teacher();
    let at = |label: &'static str, learning_rate: f64| {
        let mut arm = opd_reverse_kl(&teacher);
        arm.label = label;
        arm.config.train.optimizer.learning_rate = learning_rate;
        arm
    };
    Experiment {
        arms: vec![
            opd_reverse_kl(&teacher),
            at("OPD reverse KL (full), learning rate 5e-3", 5e-3),
            at("OPD reverse KL (full), learning rate 2e-2", 2e-2),
        ],
        target: None,
        old_tasks: Vec::new(),
    }
}
