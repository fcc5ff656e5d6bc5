//! `opd eval`: accuracy (avg@k) and pass@k of a model on held-out tasks.

use std::error::Error;
use std::path::PathBuf;

use clap::Args;
use opd_cli::RunConfig;
use opd_cli::config::EnvironmentConfig;
use opd_cli::setup::{Split, TaskChecks, check_tasks, environment, splits};
use opd_policy::Policy;
use opd_rollout::SamplingParams;
use opd_tasks::{RustTests, evaluate};

/// Arguments of `opd eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// A run file: its held-out tasks, its environment, and (without --model) the model its
    /// run wrote to `output.dir/final`.
    #[arg(long, required_unless_present = "data")]
    config: Option<PathBuf>,
    /// A `.gguf` file or a Hugging Face folder to evaluate.
    #[arg(long, required_unless_present = "config")]
    model: Option<PathBuf>,
    /// Held-out tasks (JSONL) in place of the run file's; graded by the run file's environment,
    /// or without one by their tests (Rust code) when they have tests, else by their final
    /// number (math).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Answers sampled per task (k of avg@k and pass@k).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Sampling temperature; 0 is greedy (then use --samples 1).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Evaluate only the first N tasks (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Random seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `opd eval` on the CPU.
pub fn run(args: EvalArgs) -> Result<(), Box<dyn Error>> {
    let (model_path, test, env) = match (&args.config, &args.data) {
        (Some(config_path), data) => {
            let config = RunConfig::from_file(config_path)?;
            let test = match data {
                Some(path) => Split::from_jsonl(path)?,
                None => splits(&config.data)?.1,
            };
            let model = args
                .model
                .clone()
                .unwrap_or_else(|| config.output.dir.join("final"));
            (model, test, environment(config.environment)?)
        }
        (None, Some(data)) => {
            let test = Split::from_jsonl(data)?;
            let kind = match test.tasks.iter().any(|t| t.tests.is_some()) {
                true => EnvironmentConfig::RustTests(RustTests::default()),
                false => EnvironmentConfig::Math,
            };
            let model = args
                .model
                .clone()
                .expect("clap requires --model without --config");
            (model, test, environment(kind)?)
        }
        (None, None) => unreachable!("clap requires --config or --data"),
    };
    if test.tasks.is_empty() {
        return Err("the run file names no held-out tasks (data.test)".into());
    }
    let limit = args.limit.map_or(test.tasks.len(), |n| n as usize);
    let test = Split {
        tasks: test.tasks.into_iter().take(limit).collect(),
        origins: test.origins.into_iter().take(limit).collect(),
    };
    let params = SamplingParams {
        temperature: args.temperature,
        n: args.samples,
        max_new_tokens: args.max_new_tokens,
        seed: args.seed,
        ..SamplingParams::default()
    };
    params.validate()?;
    let (model, tokenizer) =
        opd_policy::load::<burn::backend::Flex>(&model_path, &Default::default())?;
    // Every task checked first: one that fits no context or that no answer could pass is an
    // error naming it, not a silent 0.
    let checks = TaskChecks {
        tokenizer: &tokenizer,
        context: model.max_context(),
        alphabet: None,
        graded_by: Some(&*env),
    };
    check_tasks(&test, &checks)?;
    let test = &test.tasks;
    let e = evaluate(&model, &tokenizer, &*env, test, &params)?;
    let k = args.samples;
    println!(
        "{}: {} tasks, {} answers (temperature {}, max {} new tokens, seed {}): avg@{k} {:.4}, pass@{k} {:.4}, mean reward {:.4}",
        model_path.display(),
        test.len(),
        e.answers,
        args.temperature,
        args.max_new_tokens,
        args.seed,
        e.accuracy,
        e.pass_at_n,
        e.reward
    );
    Ok(())
}
