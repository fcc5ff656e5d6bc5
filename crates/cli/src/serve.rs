//! `opd serve --model PATH`: the model scores student tokens over HTTP for trainers elsewhere
//! (`[teacher] url = "http://HOST:PORT"` in their run files).

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;

use burn::tensor::backend::Backend;
use clap::Args;
use opd_cli::server::{ServeOptions, ServerState, serve};
use opd_policy::{Llama, Policy};

use crate::BackendChoice;
use crate::generate::default_backend;

/// Arguments of `opd serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The teacher: a GGUF file or a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    /// How the linear layers' weights are kept: `f32`, or `bf16` (half the memory; products
    /// through the CPU's bf16 instructions where it has them).
    #[arg(long, default_value = "f32")]
    frozen_precision: opd_policy::FrozenPrecision,
    /// Address to listen on; loopback unless told otherwise (`0.0.0.0:8000` for every
    /// interface).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// A file holding the bearer token clients must send (surrounding whitespace trimmed);
    /// default the environment's `OPD_SERVE_TOKEN`, if set.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The bearer token itself: visible to every user of this machine in the process list;
    /// prefer `--token-file` or `OPD_SERVE_TOKEN`.
    #[arg(long)]
    token: Option<String>,
    /// The model's name in answers and in `GET /v1/models` (vLLM's `--served-model-name`);
    /// default the model file's name without its folder.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Most top entries a position may ask for (`top_k`, `prompt_logprobs`), as vLLM's
    /// `--max-logprobs`.
    #[arg(long, default_value_t = 20)]
    max_logprobs: usize,
    /// Most tokens of one request, all its sequences together (and of one `/detokenize`).
    #[arg(long, default_value_t = 1 << 16)]
    max_request_tokens: usize,
    /// Seconds a request may wait and be scored before it is answered 503.
    #[arg(long, default_value_t = 300)]
    request_timeout: u64,
    /// Most sequences in one request.
    #[arg(long, default_value_t = 256)]
    max_sequences: usize,
    /// Most tokens (context + response) of one sequence; default the model's context.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Requests waiting to be scored before new ones are answered 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Sequences scored together, across requests.
    #[arg(long, default_value_t = 16)]
    batch_rows: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: BackendChoice,
}

/// Runs `opd serve` until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), Box<dyn Error>> {
    crate::on_backend!(args.backend, run_on, args)
}

fn run_on<B: Backend>(args: ServeArgs) -> Result<(), Box<dyn Error>>
where
    Llama<B>: Send + 'static,
{
    let device = B::Device::default();
    let (model, tokenizer) = opd_policy::load::<B>(&args.model, &device)?;
    let model = model.with_frozen_precision(args.frozen_precision);
    let mut options = ServeOptions::new(model.max_context());
    options.token = token(&args)?;
    options.max_logprobs = args.max_logprobs;
    options.max_request_tokens = args.max_request_tokens.max(1);
    options.request_timeout = std::time::Duration::from_secs(args.request_timeout.max(1));
    options.max_sequences = args.max_sequences.max(1);
    options.max_tokens = args.max_tokens.unwrap_or(options.max_tokens);
    options.queue = args.queue.max(1);
    options.batch_rows = args.batch_rows.max(1);
    if !args.listen.ip().is_loopback() && options.token.is_none() {
        tracing::warn!(
            "listening on {} without a token: anyone who reaches it can use the model \
             (--token or OPD_SERVE_TOKEN)",
            args.listen
        );
    }
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        let file = args.model.file_name().unwrap_or(args.model.as_os_str());
        file.to_string_lossy().into_owned()
    });
    let state = ServerState::start(model, &tokenizer, name, options);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let info = state.info();
        eprintln!(
            "serving {} ({} tokens, context {}) on http://{}",
            info.name,
            info.vocab_size,
            info.max_context,
            listener.local_addr()?
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(listener, state, shutdown).await
    })?;
    Ok(())
}

/// The bearer token from `--token-file`, `--token` (with a warning: the process list shows
/// it) or `OPD_SERVE_TOKEN`; an empty one is none.
fn token(args: &ServeArgs) -> Result<Option<String>, Box<dyn Error>> {
    let token = match (&args.token_file, &args.token) {
        (Some(_), Some(_)) => return Err("give --token-file or --token, not both".into()),
        (Some(path), None) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, Some(token)) => {
            tracing::warn!(
                "--token shows the token to every user of this machine (ps): prefer \
                 --token-file or OPD_SERVE_TOKEN"
            );
            Some(token.clone())
        }
        (None, None) => std::env::var("OPD_SERVE_TOKEN").ok(),
    };
    Ok(token.filter(|t| !t.is_empty()))
}
