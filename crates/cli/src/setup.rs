//! What a run file names, built: the models, the tasks and the environment.

use burn::tensor::backend::Backend;
use opd_policy::{ChatTokenizer, Llama};
use opd_trainers::data::read_jsonl;
use opd_trainers::{Environment, ExactAnswer, MathAnswer, Task};

use crate::config::{DataConfig, EnvironmentConfig, ModelSource, SCRATCH_TEMPLATE};
use crate::error::Result;

/// The model and tokenizer of `source` (a file or folder, or a seeded scratch model), with
/// LoRA adapters attached when it asks for them.
pub fn load_model<B: Backend>(
    source: &ModelSource,
    device: &B::Device,
) -> Result<(Llama<B>, ChatTokenizer)> {
    let (model, tokenizer) = match (&source.path, &source.scratch) {
        (Some(path), _) => opd_policy::load::<B>(path, device)?,
        (None, Some(scratch)) => (
            Llama::init(&scratch.llama_config(), scratch.seed, device),
            ChatTokenizer::characters(&scratch.alphabet, SCRATCH_TEMPLATE)?,
        ),
        (None, None) => unreachable!("RunConfig::check requires a path or a scratch model"),
    };
    let model = match &source.lora {
        Some(lora) => model.with_lora(lora),
        None => model,
    };
    Ok((model, tokenizer))
}

/// The training and held-out tasks.
pub fn tasks(data: &DataConfig) -> Result<(Vec<Task>, Vec<Task>)> {
    if let Some(arithmetic) = &data.arithmetic {
        return Ok(arithmetic
            .generator
            .split(arithmetic.train_tasks, arithmetic.test_tasks)?);
    }
    let train = match &data.train {
        Some(path) => read_jsonl(path)?,
        None => Vec::new(),
    };
    let test = match &data.test {
        Some(path) => read_jsonl(path)?,
        None => Vec::new(),
    };
    Ok((train, test))
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
