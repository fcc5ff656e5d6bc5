//! `opd generate`: load a model, render the prompt, sample, print the answers.

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use opd_policy::{LlamaConfig, Message};
use opd_rollout::{Progress, RolloutError, SamplingParams, generate_with_progress};

use crate::BackendChoice;
use crate::stream::Stream;

/// Arguments of `opd generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// A `.gguf` file or a Hugging Face folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(
        long,
        required_unless_present = "prompt_file",
        conflicts_with = "prompt_file"
    )]
    prompt: Option<String>,
    /// Read the prompt from this file (`-`: standard input).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Render the prompt as a user turn with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system turn (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus mass in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Relative probability floor in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    min_p: f64,
    /// Answers to sample.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Most answers decoded together; a larger --n runs in successive batches of this size
    /// (same answers, bounded memory).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop at this string (repeatable).
    #[arg(long = "stop")]
    stop_strings: Vec<String>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendChoice,
}

/// The first compiled-in backend: flex, else cuda, else wgpu.
pub fn default_backend() -> BackendChoice {
    #[cfg(feature = "flex")]
    return BackendChoice::Flex;
    #[cfg(all(not(feature = "flex"), feature = "cuda"))]
    return BackendChoice::Cuda;
    #[cfg(all(not(feature = "flex"), not(feature = "cuda"), feature = "wgpu"))]
    return BackendChoice::Wgpu;
}

/// Runs `opd generate` on the chosen backend.
pub fn run(args: GenerateArgs) -> Result<(), Box<dyn Error>> {
    crate::on_backend!(args.backend, run_on, args)
}

fn run_on<B: Backend>(args: GenerateArgs) -> Result<(), Box<dyn Error>> {
    // Checked before the model loads, so a bad flag fails at once.
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        max_new_tokens: args.max_new_tokens,
        n: args.n,
        max_batch: args.max_batch,
        stop_token_ids: Vec::new(),
        stop_strings: args.stop_strings,
        seed: args.seed,
    };
    params.validate()?;
    let prompt_text = match (args.prompt, &args.prompt_file) {
        (Some(text), _) => text,
        (None, Some(path)) => read_prompt(path)?,
        (None, None) => unreachable!("clap requires --prompt or --prompt-file"),
    };
    if prompt_text.is_empty() {
        return Err("the prompt is empty".into());
    }
    let device = B::Device::default();
    let (model, tokenizer) = opd_policy::load::<B>(&args.model, &device)?;
    let prompt = if args.chat {
        let mut messages: Vec<Message> = args.system.into_iter().map(Message::system).collect();
        messages.push(Message::user(prompt_text));
        tokenizer.encode_chat(&messages, true)?
    } else {
        tokenizer.encode(&prompt_text)?
    };
    check_memory(&model.config, prompt.len(), &params, available_memory())?;
    // One answer streams to stdout as it is sampled; several are printed at the end. The bar
    // (stderr) shows the prefill, then the tokens.
    let bar = ProgressBar::new((args.n * args.max_new_tokens) as u64).with_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut stream =
        (args.n == 1).then(|| Stream::new(&tokenizer, std::io::stdout(), &params.stop_strings));
    let batch = generate_with_progress(
        &model,
        &tokenizer,
        &[prompt],
        &params,
        |event| match event {
            Progress::Prefill { tokens } => {
                bar.set_message(format!("prefill: {tokens} prompt tokens"))
            }
            Progress::Decoded { generated, tokens } => {
                bar.set_message(format!("{generated} tokens"));
                if let Some(stream) = &mut stream {
                    bar.suspend(|| tokens.iter().for_each(|&(_, _, token)| stream.push(token)));
                }
            }
        },
    )
    .map_err(|e| -> Box<dyn Error> {
        // One prompt: no prompt index to give, and no sample index for one answer.
        let answer = |sample: usize| match args.n {
            1 => "the answer".to_string(),
            _ => format!("answer {sample}"),
        };
        match e {
            RolloutError::PromptTooLong { len, context, .. } => {
                format!("the prompt has {len} tokens; the model's context is {context} tokens")
                    .into()
            }
            RolloutError::NonFiniteLogits { sample, step, .. } => format!(
                "the model's logits are not finite at token {step} of {}",
                answer(sample)
            )
            .into(),
            RolloutError::UnknownToken {
                sample,
                step,
                token,
                tokens,
                ..
            } => format!(
                "{} drew token id {token} at token {step}, which the tokenizer (of {tokens} \
                 tokens) does not have",
                answer(sample)
            )
            .into(),
            other => other.into(),
        }
    })?;
    bar.finish_and_clear();
    // Written and flushed with errors returned, so that a closed or full stdout is an error to
    // report (see `main`), not a panic.
    if let Some(stream) = stream {
        stream.finish(&batch.samples[0].text)?;
    } else {
        let mut out = std::io::stdout().lock();
        for sample in &batch.samples {
            writeln!(
                out,
                "--- sample {} ({})",
                sample.sample_index, sample.finish_reason
            )?;
            writeln!(out, "{}", sample.text)?;
        }
        out.flush()?;
    }
    let stats = batch.stats;
    eprintln!(
        "{} prompt tokens in {:.2} s, {} tokens generated in {:.2} s ({:.1} tokens/s)",
        stats.prompt_tokens,
        stats.prefill.as_secs_f64(),
        stats.response_tokens,
        stats.decode.as_secs_f64(),
        stats.decode_tokens_per_second()
    );
    Ok(())
}

/// The text of a prompt file, or of standard input for `-`.
fn read_prompt(path: &Path) -> Result<String, Box<dyn Error>> {
    let read = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|e| format!("prompt file {}: {e}", path.display()).into())
}

/// Bytes kept per answer besides its tokens: the sampler's state and bookkeeping.
const ANSWER_BYTES: u64 = 512;
/// Bytes kept per generated token: the id, two log-probs, and its text.
const TOKEN_BYTES: u64 = 24;

/// The system's available memory (`MemAvailable` of `/proc/meminfo`), where it can be read.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses `--n`, `--max-new-tokens` and `--max-batch` whose answers and KV caches would not
/// fit in `available` bytes, naming the largest `--n` (or `--max-batch`) that would: the
/// answers (`n × (512 + 24 · max_new_tokens)` bytes) are all kept until printed, and one
/// batch's caches (`2 · layers · kv_heads · head_dim · 4` bytes per position) are reserved for
/// `prompt + max_new_tokens` positions, at most the context.
fn check_memory(
    config: &LlamaConfig,
    prompt: usize,
    params: &SamplingParams,
    available: Option<u64>,
) -> Result<(), Box<dyn Error>> {
    let Some(available) = available else {
        return Ok(());
    };
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let per_answer = ANSWER_BYTES + TOKEN_BYTES * params.max_new_tokens as u64;
    let positions = (prompt + params.max_new_tokens).min(config.max_position_embeddings) as u64;
    let per_row = 2
        * (config.num_hidden_layers * config.num_key_value_heads * config.head_dim) as u64
        * 4
        * positions
        + 8 * config.vocab_size as u64;
    let rows = params.n.min(params.max_batch) as u64;
    let needed = (params.n as u64).saturating_mul(per_answer) + rows * per_row;
    if needed <= available {
        return Ok(());
    }
    let room = available.saturating_sub(rows * per_row);
    let hint = if room / per_answer >= 1 {
        format!("at most --n {}", room / per_answer)
    } else {
        format!(
            "a smaller --max-batch (at most {}) or --max-new-tokens",
            (available / per_row).max(1)
        )
    };
    Err(format!(
        "--n {} answers of up to {} tokens with batches of {} need about {:.1} GiB ({:.1} GiB of answers, {:.1} GiB of KV cache); {:.1} GiB of memory is available: {hint}",
        params.n,
        params.max_new_tokens,
        rows,
        gib(needed),
        gib(params.n as u64 * per_answer),
        gib(rows * per_row),
        gib(available)
    )
    .into())
}
