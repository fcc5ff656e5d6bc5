//! The run file of `opd train`: which model, teacher, data and environment, where to write, and
//! the trainer's own [`TrainConfig`]. TOML; an unknown key or a value out of range is an error
//! that names the key and the file.
//! Each section is read into its own type (the sources in `sources`, `[parallel]` in
//! `parallel`), which refuses what cannot be meant on its own; [`RunConfig::check`] then
//! checks the sections against each other (a teacher for the method, the output folder).

use std::path::{Path, PathBuf};

use opd_tasks::RustTests;
use opd_trainers::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

mod parallel;
mod sources;

pub use parallel::{NODE_SECRET_VARIABLE, ParallelConfig};
use sources::default_test_tasks;
pub use sources::{
    ArithmeticData, DataConfig, ModelSource, SCRATCH_TEMPLATE, ScratchModel, TeacherFrom,
    TeacherSource, Weights,
};

/// A whole run, as written in `configs/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The student.
    pub model: ModelSource,
    /// OPD's teacher, or for OPSD, SDFT and SDPO the model that reads the privileged context
    /// in place of the self-teacher: a model to load, or a server to ask (required for
    /// `method = "opd"`, refused by SFT and GRPO).
    #[serde(default)]
    pub teacher: Option<TeacherSource>,
    /// Several named teachers in place of `teacher` (OPD): each task is scored by the one its
    /// `teacher` field names, or by the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teachers: Vec<TeacherSource>,
    /// Training and held-out tasks.
    pub data: DataConfig,
    /// How answers are graded.
    #[serde(default)]
    pub environment: EnvironmentConfig,
    /// Output folder, checkpoints, evaluation.
    pub output: OutputConfig,
    /// The trainer: steps, batch, optimizer, sampling, objective.
    #[serde(default)]
    pub train: TrainConfig,
    /// Stop before `train.steps` once the student has generated this many tokens (for
    /// comparing methods under one sampling budget).
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Workers and nodes of a data-parallel run (one worker by default).
    #[serde(default, skip_serializing_if = "ParallelConfig::is_single")]
    pub parallel: ParallelConfig,
}

/// A limit on the tokens a run may sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Tokens the student may generate in rollouts; for SFT, which samples nothing, the tokens
    /// of the references it may train on (a teacher's or a person's). Methods compared under
    /// one budget have spent the same number of generated tokens.
    pub generated_tokens: u64,
}

/// How answers are graded.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnvironmentConfig {
    /// The final number (`#### N`, else the last number) against the task's answer.
    #[default]
    Math,
    /// As `math`, with feedback that names the right answer (SDPO's revealing verifier).
    MathRevealing,
    /// The trimmed answer equal to the task's answer.
    Exact,
    /// The answer's Rust code compiled with the task's tests and run, under time, memory and
    /// output limits (`edition`, `compile_seconds`, `test_seconds`, `memory_mib`,
    /// `output_kib`); compiler and test output are the feedback.
    RustTests(RustTests),
}

/// Where and how often a run writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The run folder: `metrics.jsonl`, `curves.png`/`.svg`, `step-N/` checkpoints,
    /// `final/` (a Hugging Face folder). Relative paths are from the config file's folder's
    /// working directory (where `opd train` runs).
    pub dir: PathBuf,
    /// Steps between checkpoints; 0 saves only at the end. Default 10.
    #[serde(default = "default_every")]
    pub checkpoint_every: usize,
    /// Checkpoints kept (the newest). Default 2.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Steps between evaluations on the held-out tasks (and at step 0 and the end); 0 only at
    /// the end. Default 10.
    #[serde(default = "default_every")]
    pub eval_every: usize,
    /// Held-out tasks evaluated (the first ones); 0 for all. Default 200.
    #[serde(default = "default_test_tasks")]
    pub eval_tasks: usize,
}

fn default_every() -> usize {
    10
}

fn default_keep() -> usize {
    2
}

impl RunConfig {
    /// Reads and checks `path` (see [`RunConfig::parse`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML `text` read from `origin`: syntax and unknown keys (with line
    /// and column), then the combinations a run cannot start with.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let error = |problem: String| CliError::Config {
            path: origin.to_path_buf(),
            problem,
        };
        let config: Self = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        config.check().map_err(error)?;
        Ok(config)
    }

    /// Combinations that cannot run, named by key.
    pub fn check(&self) -> std::result::Result<(), String> {
        self.train.validate().map_err(|e| match e {
            opd_trainers::TrainError::Config {
                field,
                value,
                expected,
            } => format!("`train.{field}` = {value}: expected {expected}"),
            other => other.to_string(),
        })?;
        self.check_teachers()?;
        let dir = &self.output.dir;
        let normal: Vec<_> = dir.components().collect();
        if dir.as_os_str().is_empty()
            || normal
                .iter()
                .all(|c| matches!(c, std::path::Component::CurDir))
        {
            return Err(format!(
                "`output.dir` = {dir:?}: expected a folder of the run's own (e.g. \"runs/opsd\"), not the working directory"
            ));
        }
        if self.output.keep_checkpoints == 0 {
            return Err("`output.keep_checkpoints` must be at least 1".into());
        }
        self.parallel.check()
    }

    /// `teacher` or `teachers` as the method needs them.
    fn check_teachers(&self) -> std::result::Result<(), String> {
        let method = self.train.objective.settings();
        if !self.teachers.is_empty() {
            if self.teacher.is_some() {
                return Err(
                    "`teacher` and `teachers`: choose one (`[[teachers]]` for several)".into(),
                );
            }
            if !method.needs_teacher_model() {
                return Err(format!(
                    "`teachers` are only read by method = \"opd\" (this run is {})",
                    method.name()
                ));
            }
            let mut names = Vec::new();
            for (i, teacher) in self.teachers.iter().enumerate() {
                match teacher.name.as_deref() {
                    Some(name) if !name.is_empty() && !names.contains(&name) => names.push(name),
                    _ => {
                        return Err(format!(
                            "`teachers[{i}].name`: each of several teachers needs a distinct name \
                             (tasks route to it by their `teacher` field)"
                        ));
                    }
                }
            }
            return Ok(());
        }
        if self.teacher.as_ref().is_some_and(|t| t.name.is_some()) {
            return Err(
                "`teacher.name` names one of several `[[teachers]]`; a lone `[teacher]` has none"
                    .into(),
            );
        }
        let reads = method.needs_teacher_model() || method.reads_privileged_context();
        match (&self.teacher, method.needs_teacher_model()) {
            (None, true) => {
                return Err(format!(
                    "`teacher` is required with train.objective.method = \"{}\"",
                    method.name()
                ));
            }
            (Some(_), _) if !reads => {
                return Err(format!(
                    "`teacher` is read by method = \"opd\" (its teacher) and by opsd, sdft and sdpo (the model that reads the privileged context in place of the self-teacher); this run is {}",
                    self.train.objective.name()
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The settings `--resume` may change: where the run stops (`train.steps`, `budget`), how
/// often and how many checkpoints it keeps (`output.checkpoint_every`,
/// `output.keep_checkpoints`), where its folder is (`output.dir`), and how many workers share
/// each step (`parallel`: a step is the whole batch's whatever the count). None of them
/// changes a step the run takes (beyond float rounding, for `parallel`); every other setting does, or changes what its evaluations measure.
pub const RESUMABLE: [&str; 6] = [
    "train.steps",
    "parallel",
    "budget",
    "output.checkpoint_every",
    "output.keep_checkpoints",
    "output.dir",
];

impl RunConfig {
    /// The first setting (as a dotted key) in which `self` differs from `saved` other than
    /// those [`RESUMABLE`] allows; `None` when a run saved with `saved` may resume as `self`.
    pub fn resume_difference(&self, saved: &RunConfig) -> Option<String> {
        let value = |config: &RunConfig| {
            let mut v = serde_json::to_value(config).expect("a run config serializes");
            for key in RESUMABLE {
                let (section, field) = key.split_once('.').unwrap_or((key, ""));
                match field {
                    "" => v[section] = serde_json::Value::Null,
                    field => v[section][field] = serde_json::Value::Null,
                }
            }
            v
        };
        first_difference(&value(self), &value(saved), "")
    }
}

/// The dotted path of the first place `a` and `b` differ.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = serde_json::Value::Null;
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                first_difference(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &path)
            })
        }
        _ if a == b => None,
        _ => Some(at.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"
[model.scratch]
alphabet = "0123456789+"

[data.arithmetic]
max_operand = 9

[output]
dir = "runs/x"

[train]
steps = 10
objective = { method = "grpo", group_size = 4 }
"#;

    /// What the run folder keeps of a run file (`config.toml`) holds no secret: not the
    /// teacher's token, not the nodes' secret (only the path of its file).
    #[test]
    fn secrets_are_not_written_to_the_run_folder() {
        let opd = RUN.replace(
            "objective = { method = \"grpo\", group_size = 4 }",
            "objective = { method = \"opd\" }",
        );
        let text = format!(
            "{opd}\n[teacher]\nurl = \"https://teacher:8000\"\ntoken = \"s3cret-token\"\n\n\
             [parallel]\nnodes = 2\norchestrator = \"10.0.0.1:29500\"\n\
             secret_file = \"/etc/opd/run-secret\"\n"
        );
        let config = RunConfig::parse(&text, Path::new("run.toml")).unwrap();
        let Some(TeacherSource {
            from: TeacherFrom::Server(options),
            ..
        }) = &config.teacher
        else {
            panic!("a served teacher: {:?}", config.teacher)
        };
        assert_eq!(options.token.as_deref(), Some("s3cret-token"));
        let saved = toml::to_string_pretty(&config).unwrap();
        assert!(!saved.contains("s3cret-token"), "{saved}");
        assert!(saved.contains("/etc/opd/run-secret"), "{saved}");
        // The saved file resumes the same run.
        let again = RunConfig::parse(&saved, Path::new("config.toml")).unwrap();
        assert_eq!(config.resume_difference(&again), None);
    }

    #[test]
    fn several_teachers_need_distinct_names_and_a_method_that_reads_them() {
        let opd = RUN.replace(
            "objective = { method = \"grpo\", group_size = 4 }",
            "objective = { method = \"opd\" }",
        );
        let with = |teachers: &str| {
            RunConfig::parse(&format!("{opd}\n{teachers}"), Path::new("run.toml"))
                .map_err(|e| e.to_string())
        };
        let two = "[[teachers]]\nname = \"math\"\nurl = \"http://10.0.0.2:8000\"\n\n\
                   [[teachers]]\nname = \"code\"\npath = \"code.gguf\"\n";
        let run = with(two).unwrap();
        assert_eq!(run.teachers.len(), 2);
        assert_eq!(run.teachers[1].from, TeacherFrom::file("code.gguf"));
        let error = with(&two.replace("\"code\"\npath", "\"math\"\npath")).unwrap_err();
        assert!(error.contains("teachers[1].name"), "{error}");
        let error = with("[[teachers]]\nurl = \"http://h:1\"\n").unwrap_err();
        assert!(error.contains("teachers[0].name"), "{error}");
        let error = with(&format!("{two}\n[teacher]\npath = \"t.gguf\"\n")).unwrap_err();
        assert!(error.contains("choose one"), "{error}");
        let error = with("[teacher]\nname = \"x\"\npath = \"t.gguf\"\n").unwrap_err();
        assert!(error.contains("teacher.name"), "{error}");
        let error = RunConfig::parse(&format!("{RUN}\n{two}"), Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("only read by method = \"opd\""), "{error}");
        let error = with("[teacher]\nurl = \"ftp://h\"\n").unwrap_err();
        assert!(error.contains("http://HOST:PORT"), "{error}");
        let error = with("[teacher]\npath = \"t.gguf\"\nwait_seconds = 3\n").unwrap_err();
        assert!(error.contains("served teacher"), "{error}");
    }

    /// A `[teacher]` is OPD's teacher or the privileged reader of OPSD, SDFT and SDPO (as
    /// `TrainerBuilder::teacher` takes it); SFT and GRPO, which read no teacher, refuse it.
    #[test]
    fn a_teacher_is_read_by_opd_and_the_self_distillation_methods_only() {
        let teacher = "[teacher]\npath = \"t.gguf\"\n";
        for (objective, accepted) in [
            ("{ method = \"opd\" }", true),
            ("{ method = \"opsd\" }", true),
            ("{ method = \"sdft\" }", true),
            ("{ method = \"sdpo\", group_size = 4 }", true),
            ("{ method = \"sft\" }", false),
            ("{ method = \"grpo\", group_size = 4 }", false),
        ] {
            let text = RUN.replace("{ method = \"grpo\", group_size = 4 }", objective) + teacher;
            let parsed = RunConfig::parse(&text, Path::new("run.toml"));
            match accepted {
                true => assert!(parsed.is_ok(), "{objective}: {:?}", parsed.err()),
                false => {
                    let error = parsed.unwrap_err().to_string();
                    assert!(error.contains("privileged context"), "{objective}: {error}");
                }
            }
        }
    }

    #[test]
    fn a_resume_may_change_only_where_the_run_stops_and_saves() {
        let saved = RunConfig::parse(RUN, Path::new("saved.toml")).unwrap();
        let changed = |from: &str, to: &str| {
            RunConfig::parse(&RUN.replace(from, to), Path::new("new.toml")).unwrap()
        };
        assert_eq!(saved.resume_difference(&saved), None);
        let allowed = changed("[output]", "[budget]\ngenerated_tokens = 5\n\n[output]")
            .resume_difference(&saved);
        assert_eq!(allowed, None);
        let allowed = changed("steps = 10", "steps = 20").resume_difference(&saved);
        assert_eq!(allowed, None);
        let moved = changed(
            "dir = \"runs/x\"",
            "dir = \"elsewhere/x\"\ncheckpoint_every = 3",
        );
        assert_eq!(moved.resume_difference(&saved), None);
        let refused = [
            (
                "max_operand = 9",
                "max_operand = 8",
                "data.arithmetic.max_operand",
            ),
            (
                "group_size = 4",
                "group_size = 8",
                "train.objective.group_size",
            ),
            ("steps = 10", "steps = 10\nseed = 3", "train.seed"),
            (
                "dir = \"runs/x\"",
                "dir = \"runs/x\"\neval_tasks = 5",
                "output.eval_tasks",
            ),
            (
                "alphabet = \"0123456789+\"",
                "alphabet = \"0123456789+-\"",
                "model.scratch.alphabet",
            ),
        ];
        for (from, to, key) in refused {
            assert_eq!(
                changed(from, to).resume_difference(&saved).as_deref(),
                Some(key)
            );
        }
    }
}
