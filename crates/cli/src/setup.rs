//! What a run file names, built: the models (the student, its teachers), the tasks and the
//! environment.

use opd_divergences::TrainingBackend;
use std::path::Path;

use burn::tensor::backend::Backend;
use opd_policy::{ChatTokenizer, Llama, Policy};
use opd_tasks::data::read_jsonl_lines;
use opd_tasks::{Environment, ExactAnswer, MathAnswer, Task, prompt_ids};
use opd_teachers::{External, Remote, Teacher};

use crate::config::{
    DataConfig, EnvironmentConfig, ModelSource, SCRATCH_TEMPLATE, TeacherFrom, TeacherSource,
    Weights,
};
use crate::error::{CliError, Result};

/// The model and tokenizer of `source` (a file or folder, or a seeded scratch model), with
/// LoRA adapters attached when it asks for them and its frozen bases kept in the precision
/// it names.
pub fn load_model<B: Backend>(
    source: &ModelSource,
    device: &B::Device,
) -> Result<(Llama<B>, ChatTokenizer)> {
    let (model, tokenizer) = load_weights(&source.weights, device)?;
    let model = match &source.lora {
        Some(lora) => model
            .with_lora(lora)
            .with_frozen_precision(source.frozen_precision),
        None => model,
    };
    Ok((model, tokenizer))
}

/// The model and tokenizer of `weights`: read from a file or folder, or initialized from a
/// seed on a character vocabulary.
fn load_weights<B: Backend>(
    weights: &Weights,
    device: &B::Device,
) -> Result<(Llama<B>, ChatTokenizer)> {
    Ok(match weights {
        Weights::File(path) => opd_policy::load::<B>(path, device)?,
        Weights::Scratch(scratch) => (
            Llama::init(&scratch.llama_config(), scratch.seed, device),
            ChatTokenizer::characters(&scratch.alphabet, SCRATCH_TEMPLATE)?,
        ),
    })
}

/// Tasks and where each came from (`file:line`, or the generator and index), for errors
/// found after loading.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// The tasks, in file order.
    pub tasks: Vec<Task>,
    /// Where each task came from.
    pub origins: Vec<String>,
}

impl Split {
    /// The tasks of a JSONL file, each with its `file:line`.
    pub fn from_jsonl(path: &Path) -> Result<Self> {
        let (origins, tasks) = read_jsonl_lines(path)?
            .into_iter()
            .map(|(line, task)| (format!("{}:{line}", path.display()), task))
            .unzip();
        Ok(Self { tasks, origins })
    }

    fn generated(tasks: Vec<Task>, what: &str) -> Self {
        let origins = (0..tasks.len())
            .map(|i| format!("{what} task {i}"))
            .collect();
        Self { tasks, origins }
    }
}

/// The training and held-out tasks.
pub fn tasks(data: &DataConfig) -> Result<(Vec<Task>, Vec<Task>)> {
    let (train, test) = splits(data)?;
    Ok((train.tasks, test.tasks))
}

/// The training and held-out tasks, with where each came from.
pub fn splits(data: &DataConfig) -> Result<(Split, Split)> {
    Ok(match data {
        DataConfig::Arithmetic(arithmetic) => {
            let (train, test) = arithmetic
                .generator
                .split(arithmetic.train_tasks, arithmetic.test_tasks)?;
            (
                Split::generated(train, "arithmetic training"),
                Split::generated(test, "arithmetic held-out"),
            )
        }
        DataConfig::Files { train, test } => (
            Split::from_jsonl(train)?,
            match test {
                Some(path) => Split::from_jsonl(path)?,
                None => Split::default(),
            },
        ),
    })
}

/// What [`check_tasks`] checks a split against.
pub struct TaskChecks<'a> {
    /// The student's tokenizer.
    pub tokenizer: &'a ChatTokenizer,
    /// The student's context, in tokens.
    pub context: usize,
    /// A character model's alphabet: every character of a prompt or reference must be in it.
    pub alphabet: Option<&'a str>,
    /// The environment, when every task must be gradable by it.
    pub graded_by: Option<&'a dyn Environment>,
}

/// Checks every task of `split` before any step runs, so that a bad one is an error naming
/// it now rather than a failure when its batch comes up, or a silent 0: its prompt (through
/// the chat template) leaves room for an answer in the context; on a character model it
/// spells only the alphabet; and, where asked, the environment can grade it.
pub fn check_tasks(split: &Split, checks: &TaskChecks) -> Result<()> {
    let error = |origin: &str, problem: String| CliError::Task {
        origin: origin.to_string(),
        problem,
    };
    for (task, origin) in split.tasks.iter().zip(&split.origins) {
        if let Some(alphabet) = checks.alphabet {
            let texts = [
                ("prompt", Some(&task.prompt)),
                ("reference", task.reference.as_ref()),
            ];
            for (field, text) in texts {
                let Some(text) = text else { continue };
                if let Some(c) = text.chars().find(|c| !alphabet.contains(*c)) {
                    return Err(error(
                        origin,
                        format!(
                            "the {field} has {c:?}, which the scratch model's alphabet {alphabet:?} does not"
                        ),
                    ));
                }
            }
        }
        let prompt = prompt_ids(checks.tokenizer, &task.prompt)?;
        if prompt.len() >= checks.context {
            return Err(error(
                origin,
                format!(
                    "the prompt is {} tokens through the chat template; the model's context is {} (a prompt must leave room for an answer)",
                    prompt.len(),
                    checks.context
                ),
            ));
        }
        if let Some(env) = checks.graded_by
            && let Some(problem) = env.ungradable(task)
        {
            let unusable = split
                .tasks
                .iter()
                .filter(|t| env.ungradable(t).is_some())
                .count();
            return Err(error(
                origin,
                format!(
                    "{problem}: every answer to it would score 0 ({unusable} of the {} tasks are so)",
                    split.tasks.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The environment a run grades with; a code environment checks that its compiler runs.
pub fn environment(config: EnvironmentConfig) -> Result<Box<dyn Environment>> {
    Ok(match config {
        EnvironmentConfig::Math => Box::new(MathAnswer::default()),
        EnvironmentConfig::MathRevealing => Box::new(MathAnswer {
            reveal_answer: true,
        }),
        EnvironmentConfig::Exact => Box::new(ExactAnswer),
        EnvironmentConfig::RustTests(rust) => {
            rust.check()?;
            Box::new(rust)
        }
    })
}

/// OPD's teacher: the model `source` names, checked against the student's vocabulary, or
/// the server it names (whose vocabulary is checked when connecting; its token, when the run
/// file gives none, is the environment's `OPD_TEACHER_TOKEN`).
pub fn load_teacher<B: TrainingBackend>(
    source: &TeacherSource,
    student: &opd_policy::Llama<B>,
    tokenizer: &opd_policy::ChatTokenizer,
    device: &B::Device,
) -> Result<Box<dyn Teacher<B>>> {
    let error = opd_trainers::TrainError::from;
    match &source.from {
        TeacherFrom::Weights { weights, precision } => {
            let (teacher, teacher_tokenizer) = load_weights::<B::InnerBackend>(weights, device)?;
            let teacher = teacher.with_frozen_precision(*precision);
            let external = External::new(teacher, &teacher_tokenizer, student, tokenizer);
            Ok(Box::new(external.map_err(error)?))
        }
        TeacherFrom::Server(options) => {
            let mut options = options.clone();
            if options.token.is_none() {
                options.token = std::env::var("OPD_TEACHER_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty());
            }
            let url = options.url.clone();
            let remote =
                Remote::connect(options, tokenizer, student.vocab_size()).map_err(error)?;
            tracing::info!(
                "teacher: {} served at {url} (vocabulary checked)",
                remote.info().name
            );
            Ok(Box::new(remote))
        }
    }
}
