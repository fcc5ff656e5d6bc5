//! Where a run's models and tasks come from: `[model]`, `[teacher]` / `[[teachers]]` and
//! `[data]`. Each is read from the run file's flat keys (`path`, `scratch`, `url`, …) into an
//! enum of what it can be, so a source is checked once, when the file is read, and the code
//! that loads it matches on a value that cannot be half one thing and half another.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opd_policy::{Architecture, FrozenPrecision, LlamaConfig, LoraConfig};
use opd_tasks::data::Arithmetic;
use opd_teachers::RemoteOptions;
use opd_teachers::remote::Protocol;
use serde::{Deserialize, Serialize};

/// A model's weights.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// A `.gguf` file or a Hugging Face folder (a finished run's `final/` is one): `path`.
    File(PathBuf),
    /// A model initialized from a seed on a character vocabulary: `scratch`.
    Scratch(ScratchModel),
}

impl Weights {
    /// The file or folder the weights are read from; `None` for a scratch model.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Scratch(_) => None,
        }
    }

    /// From a table's `path` and `scratch` keys (`what` names the table in the error, `or`
    /// what else it may hold in their place).
    fn from_keys(
        path: Option<PathBuf>,
        scratch: Option<ScratchModel>,
        what: &str,
        or: Option<&str>,
    ) -> Result<Self, String> {
        const PATH: &str = "`path` (a .gguf file or a Hugging Face folder)";
        match (path, scratch) {
            (Some(_), Some(_)) => Err(format!("{what} has both `path` and `scratch`: choose one")),
            (Some(path), None) => Ok(Self::File(path)),
            (None, Some(scratch)) => scratch.check().map(|()| Self::Scratch(scratch)),
            (None, None) => Err(match or {
                None => format!("{what} needs {PATH} or `scratch`"),
                Some(or) => format!("{what} needs {PATH}, `scratch` or {or}"),
            }),
        }
    }

    /// The `path` and `scratch` keys again.
    fn into_keys(self) -> (Option<PathBuf>, Option<ScratchModel>) {
        match self {
            Self::File(path) => (Some(path), None),
            Self::Scratch(scratch) => (None, Some(scratch)),
        }
    }
}

/// The student: its weights, with LoRA adapters when it trains them (`[model]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelKeys", into = "ModelKeys")]
pub struct ModelSource {
    /// Where the weights come from.
    pub weights: Weights,
    /// Train LoRA adapters of this rank and scale on these layers, the base frozen.
    pub lora: Option<LoraConfig>,
    /// How the frozen base weights of the linear layers are kept (only with `lora`).
    pub frozen_precision: FrozenPrecision,
}

/// `[model]` as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelKeys {
    /// A `.gguf` file or a Hugging Face folder.
    #[serde(default)]
    path: Option<PathBuf>,
    /// A model initialized from a seed on a character vocabulary, in place of `path`.
    #[serde(default)]
    scratch: Option<ScratchModel>,
    /// LoRA adapters' rank, scale and layers.
    #[serde(default)]
    lora: Option<LoraConfig>,
    /// `"f32"` (default) or `"bf16"`: how the linear layers' frozen base weights are kept.
    #[serde(default, skip_serializing_if = "is_f32")]
    frozen_precision: FrozenPrecision,
}

fn is_f32(precision: &FrozenPrecision) -> bool {
    *precision == FrozenPrecision::F32
}

impl TryFrom<ModelKeys> for ModelSource {
    type Error = String;

    fn try_from(keys: ModelKeys) -> Result<Self, String> {
        if keys.lora.is_none() && keys.frozen_precision != FrozenPrecision::F32 {
            return Err(format!(
                "`frozen_precision` = \"{}\" is for frozen weights, and without `[model.lora]` \
                 every weight of the student trains: add LoRA adapters or remove the key",
                keys.frozen_precision.name()
            ));
        }
        Ok(Self {
            weights: Weights::from_keys(keys.path, keys.scratch, "`model`", None)?,
            lora: keys.lora,
            frozen_precision: keys.frozen_precision,
        })
    }
}

impl From<ModelSource> for ModelKeys {
    fn from(source: ModelSource) -> Self {
        let (path, scratch) = source.weights.into_keys();
        Self {
            path,
            scratch,
            lora: source.lora,
            frozen_precision: source.frozen_precision,
        }
    }
}

/// OPD's teacher, or the model that reads the privileged context: a model loaded into the
/// trainer (`path` or `scratch`), or one served over HTTP (`url`: `opd serve`, vLLM, SGLang).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TeacherKeys", into = "TeacherKeys")]
pub struct TeacherSource {
    /// The teacher's name, which tasks route to (`[[teachers]]` only).
    pub name: Option<String>,
    /// Loaded or served.
    pub from: TeacherFrom,
}

impl TeacherSource {
    /// The file or folder a loaded teacher's weights are read from; `None` for a scratch
    /// model or a server.
    pub fn file(&self) -> Option<&Path> {
        match &self.from {
            TeacherFrom::Weights { weights, .. } => weights.file(),
            TeacherFrom::Server(_) => None,
        }
    }
}

/// Where a teacher's scores come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TeacherFrom {
    /// A model loaded into the trainer (frozen, no LoRA), its linear layers' weights kept in
    /// `precision`.
    Weights {
        /// Where the weights come from.
        weights: Weights,
        /// How the linear layers' weights are kept.
        precision: FrozenPrecision,
    },
    /// A scoring server; the token, when the run file gives none, is the environment's
    /// `OPD_TEACHER_TOKEN` at load time.
    Server(RemoteOptions),
}

impl TeacherFrom {
    /// A teacher loaded from the file or folder `path`, its weights in f32.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::Weights {
            weights: Weights::File(path.into()),
            precision: FrozenPrecision::F32,
        }
    }
}

/// The protocol of a served teacher, as the run file spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ServedProtocol {
    /// `opd serve`.
    #[default]
    Opd,
    /// vLLM's OpenAI-compatible completions endpoint with `prompt_logprobs`.
    Vllm,
}

/// `[teacher]` (or one of `[[teachers]]`) as written.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeacherKeys {
    /// The teacher's name, which tasks route to (`[[teachers]]` only).
    #[serde(default)]
    name: Option<String>,
    /// A `.gguf` file or a Hugging Face folder.
    #[serde(default)]
    path: Option<PathBuf>,
    /// A model initialized from a seed on a character vocabulary.
    #[serde(default)]
    scratch: Option<ScratchModel>,
    /// `"f32"` (default) or `"bf16"`: how a loaded teacher's linear layers' weights are kept.
    #[serde(default, skip_serializing_if = "is_f32")]
    frozen_precision: FrozenPrecision,
    /// A scoring server (`http://HOST:PORT`, `opd serve`).
    #[serde(default)]
    url: Option<String>,
    /// What the server speaks: `"opd"` (`opd serve`, default) or `"vllm"` (a vLLM or SGLang
    /// server's completions endpoint with prompt log-probs).
    #[serde(default)]
    protocol: ServedProtocol,
    /// The served model's name, for a vLLM server holding several; default its first.
    #[serde(default)]
    served_model: Option<String>,
    /// The server's bearer token; default the environment's `OPD_TEACHER_TOKEN`, if set.
    /// Never written to the run folder's copy of the run file.
    #[serde(default, skip_serializing)]
    token: Option<String>,
    /// The longest one request to the server may take. Default 120.
    #[serde(default)]
    timeout_seconds: Option<f64>,
    /// How long a run waits for an unreachable or busy server before it stops. Default 300.
    #[serde(default)]
    wait_seconds: Option<f64>,
    /// The largest answer the client reads, in MiB. Default 256.
    #[serde(default)]
    max_answer_mib: Option<u64>,
}

/// The largest `max_answer_mib` (1 TiB).
const MAX_ANSWER_MIB: u64 = 1 << 20;

impl TryFrom<TeacherKeys> for TeacherSource {
    type Error = String;

    fn try_from(keys: TeacherKeys) -> Result<Self, String> {
        let Some(url) = keys.url else {
            let served = keys.token.is_some()
                || keys.timeout_seconds.is_some()
                || keys.wait_seconds.is_some()
                || keys.max_answer_mib.is_some()
                || keys.served_model.is_some()
                || keys.protocol != ServedProtocol::Opd;
            if served {
                return Err("`token`, `timeout_seconds`, `wait_seconds`, `max_answer_mib`, `protocol` and `served_model` are for a served teacher (`url`)"
                    .into());
            }
            let weights = Weights::from_keys(
                keys.path,
                keys.scratch,
                "a teacher",
                Some("`url` (a server, `opd serve`)"),
            )?;
            return Ok(Self {
                name: keys.name,
                from: TeacherFrom::Weights {
                    weights,
                    precision: keys.frozen_precision,
                },
            });
        };
        if keys.path.is_some() || keys.scratch.is_some() {
            return Err("a teacher has `url` and a model (`path` or `scratch`): choose one".into());
        }
        if keys.frozen_precision != FrozenPrecision::F32 {
            return Err(
                "`frozen_precision` is for a teacher loaded here (`path`): a server keeps \
                 its own weights (`opd serve --frozen-precision`)"
                    .into(),
            );
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "`url` = {url:?}: expected http://HOST:PORT or https://HOST:PORT"
            ));
        }
        let seconds = |key: &str, value: Option<f64>, default: Duration| match value {
            None => Ok(default),
            Some(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
            Some(v) => Err(format!(
                "`{key}` = {v}: expected a finite number of seconds > 0 (below 1e9)"
            )),
        };
        let mut options = RemoteOptions::new(url);
        options.timeout = seconds("timeout_seconds", keys.timeout_seconds, options.timeout)?;
        options.wait = seconds("wait_seconds", keys.wait_seconds, options.wait)?;
        match keys.max_answer_mib {
            None => {}
            Some(mib @ 1..=MAX_ANSWER_MIB) => options.max_answer_bytes = mib << 20,
            Some(mib) => {
                return Err(format!(
                    "`max_answer_mib` = {mib}: expected 1 to {MAX_ANSWER_MIB}"
                ));
            }
        }
        options.protocol = match (keys.protocol, keys.served_model) {
            (ServedProtocol::Opd, None) => Protocol::Opd,
            (ServedProtocol::Opd, Some(_)) => {
                return Err(
                    "`served_model` names a model of a vLLM server (`protocol = \"vllm\"`)".into(),
                );
            }
            (ServedProtocol::Vllm, model) => Protocol::Vllm {
                model: model.unwrap_or_default(),
            },
        };
        options.token = keys.token.filter(|t| !t.is_empty());
        Ok(Self {
            name: keys.name,
            from: TeacherFrom::Server(options),
        })
    }
}

impl From<TeacherSource> for TeacherKeys {
    fn from(source: TeacherSource) -> Self {
        let name = source.name;
        match source.from {
            TeacherFrom::Weights { weights, precision } => {
                let (path, scratch) = weights.into_keys();
                Self {
                    name,
                    path,
                    scratch,
                    frozen_precision: precision,
                    ..Self::default()
                }
            }
            TeacherFrom::Server(options) => {
                let (protocol, served_model) = match options.protocol {
                    Protocol::Opd => (ServedProtocol::Opd, None),
                    Protocol::Vllm { model } => {
                        (ServedProtocol::Vllm, Some(model).filter(|m| !m.is_empty()))
                    }
                };
                Self {
                    name,
                    url: Some(options.url),
                    protocol,
                    served_model,
                    token: options.token,
                    timeout_seconds: Some(options.timeout.as_secs_f64()),
                    wait_seconds: Some(options.wait.as_secs_f64()),
                    max_answer_mib: Some(options.max_answer_bytes >> 20),
                    ..Self::default()
                }
            }
        }
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

impl ScratchModel {
    /// `Err` unless the heads divide the width into an even head size and nothing is empty.
    fn check(&self) -> Result<(), String> {
        let s = self;
        let divides = s.heads > 0
            && s.hidden_size.is_multiple_of(s.heads)
            && (s.hidden_size / s.heads).is_multiple_of(2);
        if !divides || s.layers == 0 || s.max_positions == 0 || s.alphabet.is_empty() {
            return Err(
                "`scratch`: heads must divide hidden_size into an even head size, and \
                        layers, max_positions and the alphabet must not be empty"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Training and held-out tasks (`[data]`): JSONL files, or the built-in arithmetic generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DataKeys", into = "DataKeys")]
pub enum DataConfig {
    /// Tasks read from files, one JSON object per line: `train`, and `test` (held out).
    Files {
        /// Training tasks.
        train: PathBuf,
        /// Held-out tasks for evaluation; none without it.
        test: Option<PathBuf>,
    },
    /// Tasks generated: `[data.arithmetic]`.
    Arithmetic(ArithmeticData),
}

impl DataConfig {
    /// The files the tasks are read from (none for generated ones).
    pub fn files(&self) -> Vec<&Path> {
        match self {
            Self::Files { train, test } => std::iter::once(train)
                .chain(test)
                .map(|p| p.as_path())
                .collect(),
            Self::Arithmetic(_) => Vec::new(),
        }
    }
}

/// `[data]` as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataKeys {
    /// Training tasks, one JSON object per line.
    #[serde(default)]
    train: Option<PathBuf>,
    /// Held-out tasks for evaluation.
    #[serde(default)]
    test: Option<PathBuf>,
    /// Generate arithmetic tasks instead of reading files.
    #[serde(default)]
    arithmetic: Option<ArithmeticData>,
}

impl TryFrom<DataKeys> for DataConfig {
    type Error = String;

    fn try_from(keys: DataKeys) -> Result<Self, String> {
        match (keys.arithmetic, keys.train, keys.test) {
            (Some(arithmetic), None, None) => Ok(Self::Arithmetic(arithmetic)),
            (None, Some(train), test) => Ok(Self::Files { train, test }),
            (Some(_), _, _) => Err(
                "`data.arithmetic` generates both splits: drop `data.train` and `data.test`".into(),
            ),
            (None, None, _) => Err("`data` needs `train` (a JSONL file) or `arithmetic`".into()),
        }
    }
}

impl From<DataConfig> for DataKeys {
    fn from(data: DataConfig) -> Self {
        match data {
            DataConfig::Files { train, test } => Self {
                train: Some(train),
                test,
                arithmetic: None,
            },
            DataConfig::Arithmetic(arithmetic) => Self {
                train: None,
                test: None,
                arithmetic: Some(arithmetic),
            },
        }
    }
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

pub(super) fn default_test_tasks() -> usize {
    200
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teacher(text: &str) -> Result<TeacherSource, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Each way a source can be half one thing and half another is refused by name, when the
    /// file is read.
    #[test]
    fn a_source_is_one_thing() {
        let model = |text: &str| toml::from_str::<ModelSource>(text).map_err(|e| e.to_string());
        let error = model("path = \"m.gguf\"\n[scratch]\nalphabet = \"01\"").unwrap_err();
        assert!(error.contains("both `path` and `scratch`"), "{error}");
        let error = model("lora = { rank = 4, alpha = 8.0, targets = [] }").unwrap_err();
        assert!(error.contains("`model` needs `path`"), "{error}");
        let error = model("[scratch]\nheads = 3").unwrap_err();
        assert!(error.contains("heads must divide"), "{error}");
        let error = teacher("").unwrap_err();
        assert!(error.contains("`scratch` or `url`"), "{error}");
        let error = teacher("url = \"http://h:1\"\npath = \"t.gguf\"").unwrap_err();
        assert!(error.contains("choose one"), "{error}");
        let error = teacher("path = \"t.gguf\"\ntimeout_seconds = 3").unwrap_err();
        assert!(error.contains("served teacher"), "{error}");
        let error = teacher("url = \"h:1\"").unwrap_err();
        assert!(error.contains("http://HOST:PORT"), "{error}");
        for bad in [
            "timeout_seconds = 0",
            "wait_seconds = -1",
            "wait_seconds = nan",
        ] {
            let error = teacher(&format!("url = \"http://h:1\"\n{bad}")).unwrap_err();
            assert!(error.contains("seconds > 0"), "{bad}: {error}");
        }
        for bad in ["0", "1048577"] {
            let error = teacher(&format!("url = \"http://h:1\"\nmax_answer_mib = {bad}"));
            assert!(error.unwrap_err().contains("max_answer_mib"), "{bad}");
        }
        let error = teacher("url = \"http://h:1\"\nserved_model = \"m\"").unwrap_err();
        assert!(error.contains("vllm"), "{error}");
        let error = model("path = \"m.gguf\"\nfrozen_precision = \"bf16\"").unwrap_err();
        assert!(error.contains("without `[model.lora]`"), "{error}");
        let error = model("path = \"m.gguf\"\nfrozen_precision = \"f16\"").unwrap_err();
        assert!(
            error.contains("frozen_precision") || error.contains("f16"),
            "{error}"
        );
        let error = teacher("url = \"http://h:1\"\nfrozen_precision = \"bf16\"").unwrap_err();
        assert!(error.contains("opd serve --frozen-precision"), "{error}");
        let data = |text: &str| toml::from_str::<DataConfig>(text).map_err(|e| e.to_string());
        let error = data("test = \"t.jsonl\"").unwrap_err();
        assert!(error.contains("needs `train`"), "{error}");
        let error = data("train = \"t.jsonl\"\n[arithmetic]\nmax_operand = 3").unwrap_err();
        assert!(error.contains("drop `data.train`"), "{error}");
    }

    /// `frozen_precision` is read into the sources and written back only when it is not the
    /// default, so run files without it read and write as before.
    #[test]
    fn frozen_precision_round_trips_and_f32_is_not_written() {
        let text = "path = \"m.gguf\"\nfrozen_precision = \"bf16\"\n\n[lora]\nrank = 4\nalpha = 8.0\ntargets = [\"q_proj\"]\n";
        let source: ModelSource = toml::from_str(text).unwrap();
        assert_eq!(source.frozen_precision, FrozenPrecision::Bf16);
        let written = toml::to_string(&source).unwrap();
        assert_eq!(toml::from_str::<ModelSource>(&written).unwrap(), source);
        let source = teacher("path = \"t.gguf\"\nfrozen_precision = \"bf16\"").unwrap();
        let TeacherFrom::Weights { precision, .. } = &source.from else {
            panic!("{source:?}")
        };
        assert_eq!(*precision, FrozenPrecision::Bf16);
        assert_eq!(teacher(&toml::to_string(&source).unwrap()).unwrap(), source);
        let plain = teacher("path = \"t.gguf\"").unwrap();
        assert!(
            !toml::to_string(&plain)
                .unwrap()
                .contains("frozen_precision")
        );
    }

    /// A served teacher is read into the client's own options (defaults filled in), written
    /// back with them and without its token, and read again to the same value.
    #[test]
    fn a_served_teacher_is_the_clients_options() {
        let source = teacher(
            "url = \"https://t:8000/\"\nprotocol = \"vllm\"\nserved_model = \"big\"\n\
             token = \"s3cret\"\nwait_seconds = 30",
        )
        .unwrap();
        let TeacherFrom::Server(options) = &source.from else {
            panic!("{source:?}")
        };
        let mut expected = RemoteOptions::new("https://t:8000");
        expected.protocol = Protocol::Vllm {
            model: "big".into(),
        };
        expected.token = Some("s3cret".into());
        expected.wait = Duration::from_secs(30);
        assert_eq!(options, &expected);
        let written = toml::to_string(&source).unwrap();
        assert!(!written.contains("s3cret"), "{written}");
        assert!(written.contains("timeout_seconds = 120"), "{written}");
        let mut again = teacher(&written).unwrap();
        let TeacherFrom::Server(options) = &mut again.from else {
            panic!("{again:?}")
        };
        options.token = Some("s3cret".into());
        assert_eq!(again, source);
    }
}
