//! The run file of `opd train`: which model, teacher, data and environment, where to write, and
//! the trainer's own [`TrainConfig`]. TOML; an unknown key or a value out of range is an error
//! that names the key and the file.
//!
//! (Over 500 lines with its tests, which are the last hundred: the code is the run file's
//! sections and the checks between them, read together.)

use std::path::{Path, PathBuf};

use opd_policy::{Architecture, LlamaConfig, LoraConfig};
use opd_tasks::RustTests;
use opd_tasks::data::Arithmetic;
use opd_trainers::TrainConfig;
use opd_trainers::parallel::{NodeSecret, Topology};
use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

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

/// Data parallelism: `workers` per process (one device each) on `nodes` processes; each step
/// equals the step one worker takes on the whole batch (`docs/parallel.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    /// Workers in each process: threads on the CPU backend, devices `0..workers` on a GPU
    /// backend. Default 1.
    pub workers: usize,
    /// Processes (nodes), each with `workers` workers. Default 1.
    pub nodes: usize,
    /// This process's index among the nodes (usually given with `--node-rank`); node 0 writes
    /// the run folder and starts the orchestrator. Default 0.
    pub node_rank: usize,
    /// Node 0's address as the other nodes reach it, `HOST:PORT` (several nodes only): node
    /// 0 listens on that address (that interface only), the others connect to it.
    pub orchestrator: Option<String>,
    /// A file holding the run's secret (several nodes only; at least 16 bytes, the same on
    /// every node): each node proves it to node 0 before its values are trusted. Default: the
    /// environment's `OPD_NODE_SECRET`. Only the path is written to the run folder.
    pub secret_file: Option<PathBuf>,
    /// How long a worker waits for the others at an exchange before the run stops with an
    /// error naming who did not arrive (node 0's evaluations and checkpoints happen while the
    /// others wait). Default 600.
    pub timeout_seconds: u64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            nodes: 1,
            node_rank: 0,
            orchestrator: None,
            secret_file: None,
            timeout_seconds: 600,
        }
    }
}

impl ParallelConfig {
    /// One worker in one process: no exchange at all.
    pub fn is_single(&self) -> bool {
        self.workers == 1 && self.nodes == 1
    }

    /// `Err` naming the first setting that cannot work.
    fn check(&self) -> std::result::Result<(), String> {
        let p = self;
        if p.workers == 0 || p.nodes == 0 || p.timeout_seconds == 0 {
            return Err(
                "`parallel.workers`, `parallel.nodes` and `parallel.timeout_seconds` \
                        must be at least 1"
                    .into(),
            );
        }
        if p.node_rank >= p.nodes {
            return Err(format!(
                "`parallel.node_rank` = {}: expected below `parallel.nodes` = {}",
                p.node_rank, p.nodes
            ));
        }
        if p.nodes > 1 && p.orchestrator.is_none() {
            return Err(format!(
                "`parallel.nodes` = {}: several nodes need `parallel.orchestrator`, node 0's \
                 address (\"HOST:PORT\")",
                p.nodes
            ));
        }
        Ok(())
    }

    /// The topology of this process's group; over several nodes, with the run's secret read
    /// from `secret_file` or `OPD_NODE_SECRET` (`Err` names the setting).
    pub fn topology(&self) -> std::result::Result<Topology, String> {
        let secret = match (self.nodes > 1, &self.secret_file) {
            (false, _) => None,
            (true, Some(path)) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("`parallel.secret_file` = {}: {e}", path.display()))?;
                let secret = NodeSecret::new(&bytes)
                    .map_err(|e| format!("`parallel.secret_file` = {}: {e}", path.display()))?;
                Some(secret)
            }
            (true, None) => match std::env::var_os(NODE_SECRET_VARIABLE) {
                Some(value) => Some(
                    NodeSecret::new(value.as_encoded_bytes())
                        .map_err(|e| format!("{NODE_SECRET_VARIABLE}: {e}"))?,
                ),
                None => {
                    return Err(format!(
                        "`parallel.nodes` = {}: several nodes need the run's secret, the same \
                         on every node: set {NODE_SECRET_VARIABLE} or `parallel.secret_file`",
                        self.nodes
                    ));
                }
            },
        };
        Ok(Topology {
            local_workers: self.workers,
            nodes: self.nodes,
            node_rank: self.node_rank,
            orchestrator: self.orchestrator.clone(),
            secret,
            timeout: std::time::Duration::from_secs(self.timeout_seconds),
        })
    }
}

/// The environment variable holding a multi-node run's secret when the run file names no
/// `parallel.secret_file`.
pub const NODE_SECRET_VARIABLE: &str = "OPD_NODE_SECRET";

/// A limit on the tokens a run may sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Tokens the student may generate in rollouts; for SFT, which samples nothing, the tokens
    /// of the references it may train on (a teacher's or a person's). Methods compared under
    /// one budget have spent the same number of generated tokens.
    pub generated_tokens: u64,
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// A `.gguf` file or a Hugging Face folder (a finished run's `final/` is one).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A model initialized from a seed on a character vocabulary, in place of `path`.
    #[serde(default)]
    pub scratch: Option<ScratchModel>,
    /// Train LoRA adapters of this rank and scale on these layers, the base frozen.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

/// OPD's teacher: a model loaded into the trainer (`path` or `scratch`), or one served over
/// HTTP by `opd serve` (`url`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSource {
    /// The teacher's name, which tasks route to (`[[teachers]]` only).
    #[serde(default)]
    pub name: Option<String>,
    /// A `.gguf` file or a Hugging Face folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A model initialized from a seed on a character vocabulary.
    #[serde(default)]
    pub scratch: Option<ScratchModel>,
    /// A scoring server (`http://HOST:PORT`, `opd serve`).
    #[serde(default)]
    pub url: Option<String>,
    /// What the server speaks: `"opd"` (`opd serve`, default) or `"vllm"` (a vLLM or SGLang
    /// server's completions endpoint with prompt log-probs).
    #[serde(default)]
    pub protocol: ServedProtocol,
    /// The served model's name, for a vLLM server holding several; default its first.
    #[serde(default)]
    pub served_model: Option<String>,
    /// The server's bearer token; default the environment's `OPD_TEACHER_TOKEN`, if set.
    /// Never written to the run folder's copy of the run file.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// The longest one request to the server may take. Default 120.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// How long a run waits for an unreachable or busy server before it stops. Default 300.
    #[serde(default)]
    pub wait_seconds: Option<f64>,
    /// The largest answer the client reads, in MiB. Default 256.
    #[serde(default)]
    pub max_answer_mib: Option<u64>,
}

/// The protocol of a served teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServedProtocol {
    /// `opd serve`.
    #[default]
    Opd,
    /// vLLM's OpenAI-compatible completions endpoint with `prompt_logprobs`.
    Vllm,
}

impl TeacherSource {
    /// The model to load, when the teacher is not served.
    pub fn model(&self) -> Option<ModelSource> {
        (self.url.is_none()).then(|| ModelSource {
            path: self.path.clone(),
            scratch: self.scratch.clone(),
            lora: None,
        })
    }
}

/// A small Llama initialized from a seed, on a character tokenizer: for tasks like arithmetic
/// that a model learns from scratch in minutes on a CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScratchModel {
    /// The characters, one token each (`<eos>` is added as id 0).
    pub alphabet: String,
    /// Decoder blocks. Default 2.
    pub layers: usize,
    /// Width. Default 64.
    pub hidden_size: usize,
    /// MLP width. Default 4 × 64.
    pub intermediate_size: usize,
    /// Attention heads (head size `hidden_size / heads`). Default 4.
    pub heads: usize,
    /// Longest prompt plus answer. Default 32.
    pub max_positions: usize,
    /// Seed of the initial weights. Default 0.
    pub seed: u64,
}

impl Default for ScratchModel {
    fn default() -> Self {
        Self {
            alphabet: "0123456789+-*".into(),
            layers: 2,
            hidden_size: 64,
            intermediate_size: 256,
            heads: 4,
            max_positions: 32,
            seed: 0,
        }
    }
}

/// The chat template of scratch models: the question, then `=`.
pub const SCRATCH_TEMPLATE: &str = "{% for m in messages %}{{ m.content }}{% endfor %}\
                                    {% if add_generation_prompt %}={% endif %}";

impl ScratchModel {
    /// The architecture: a Llama with tied embeddings, `vocab = alphabet + 1`.
    pub fn llama_config(&self) -> LlamaConfig {
        LlamaConfig {
            architecture: Architecture::Llama,
            vocab_size: self.alphabet.chars().count() + 1,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: self.heads,
            head_dim: self.hidden_size / self.heads.max(1),
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: self.max_positions,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
        }
    }
}

/// Training and held-out tasks: JSONL files, or the built-in arithmetic generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training tasks, one JSON object per line.
    #[serde(default)]
    pub train: Option<PathBuf>,
    /// Held-out tasks for evaluation.
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Generate arithmetic tasks instead of reading files.
    #[serde(default)]
    pub arithmetic: Option<ArithmeticData>,
}

/// The arithmetic generator and the split sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithmeticData {
    /// Operands, operations, seed.
    #[serde(flatten)]
    pub generator: Arithmetic,
    /// Training questions. Default 1000.
    #[serde(default = "default_train_tasks")]
    pub train_tasks: usize,
    /// Held-out questions, disjoint from the training ones. Default 200.
    #[serde(default = "default_test_tasks")]
    pub test_tasks: usize,
}

fn default_train_tasks() -> usize {
    1000
}

fn default_test_tasks() -> usize {
    200
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
        check_source("model", &self.model)?;
        self.check_teachers()?;
        let d = &self.data;
        match (d.arithmetic.is_some(), d.train.is_some(), d.test.is_some()) {
            (true, false, false) | (false, true, _) => {}
            (true, _, _) => {
                return Err(
                    "`data.arithmetic` generates both splits: drop `data.train` and `data.test`"
                        .into(),
                );
            }
            (false, false, _) => {
                return Err("`data` needs `train` (a JSONL file) or `arithmetic`".into());
            }
        }
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
                check_teacher(teacher)?;
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
            (Some(teacher), _) => check_teacher(teacher)?,
            (None, false) => {}
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

fn check_teacher(teacher: &TeacherSource) -> std::result::Result<(), String> {
    let seconds = |key: &str, value: Option<f64>| match value {
        Some(v) if !(v.is_finite() && v > 0.0) => Err(format!(
            "`teacher.{key}` = {v}: expected a finite number of seconds > 0"
        )),
        _ => Ok(()),
    };
    match (&teacher.url, teacher.model()) {
        (Some(url), None) => {
            if teacher.path.is_some() || teacher.scratch.is_some() {
                return Err(
                    "`teacher` has `url` and a model (`path` or `scratch`): choose one".into(),
                );
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "`teacher.url` = {url:?}: expected http://HOST:PORT or https://HOST:PORT"
                ));
            }
            seconds("timeout_seconds", teacher.timeout_seconds)?;
            if teacher.max_answer_mib == Some(0) {
                return Err("`teacher.max_answer_mib` = 0: expected at least 1".into());
            }
            seconds("wait_seconds", teacher.wait_seconds)
        }
        (None, Some(model)) => {
            if teacher.token.is_some()
                || teacher.timeout_seconds.is_some()
                || teacher.wait_seconds.is_some()
                || teacher.max_answer_mib.is_some()
                || teacher.served_model.is_some()
                || teacher.protocol != ServedProtocol::Opd
            {
                return Err(
                    "`teacher.token`, `timeout_seconds`, `wait_seconds`, `max_answer_mib`, \
                     `protocol` and `served_model` are for a served teacher (`url`)"
                        .into(),
                );
            }
            check_source("teacher", &model)
        }
        _ => unreachable!("model() is Some exactly when url is None"),
    }
}

fn check_source(key: &str, source: &ModelSource) -> std::result::Result<(), String> {
    match (&source.path, &source.scratch) {
        (Some(_), Some(_)) => Err(format!("`{key}` has both `path` and `scratch`: choose one")),
        (None, None) if key == "teacher" => Err(
            "`teacher` needs `path` (a .gguf file or a Hugging Face folder), `scratch` or `url` \
             (a server, `opd serve`)"
                .into(),
        ),
        (None, None) => Err(format!(
            "`{key}` needs `path` (a .gguf file or a Hugging Face folder) or `scratch`"
        )),
        (None, Some(s)) => {
            let divides =
                s.heads > 0 && s.hidden_size % s.heads == 0 && (s.hidden_size / s.heads) % 2 == 0;
            if !divides || s.layers == 0 || s.max_positions == 0 || s.alphabet.is_empty() {
                Err(format!(
                    "`{key}.scratch`: heads must divide hidden_size into an even head size, and layers, max_positions and the alphabet must not be empty"
                ))
            } else {
                Ok(())
            }
        }
        (Some(_), None) => Ok(()),
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
        assert_eq!(
            config.teacher.as_ref().unwrap().token.as_deref(),
            Some("s3cret-token")
        );
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
        assert_eq!(
            run.teachers[1].model().unwrap().path.unwrap(),
            Path::new("code.gguf")
        );
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
