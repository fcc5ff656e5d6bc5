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
    /// Address to listen on; loopback unless told otherwise (`0.0.0.0:8000` for every
    /// interface).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// A bearer token clients must send; default the environment's `OPD_SERVE_TOKEN`, if set.
    #[arg(long, env = "OPD_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
    let mut options = ServeOptions::new(model.max_context());
    options.token = args.token.filter(|t| !t.is_empty());
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
    let name = args.model.display().to_string();
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
