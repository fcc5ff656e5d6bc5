//! A tiny model served by `opd serve`'s router on a free loopback port, for the serving tests.

use std::net::SocketAddr;
use std::sync::Arc;

use burn::backend::Flex;
use opd_cli::server::{ServeOptions, ServerState, serve};
use opd_policy::{ChatTokenizer, Llama, LlamaConfig};

pub const TEMPLATE: &str = "{% for m in messages %}{{ m.content }}{% endfor %}\
                        {% if add_generation_prompt %}={% endif %}";

pub fn tokenizer(alphabet: &str) -> ChatTokenizer {
    ChatTokenizer::characters(alphabet, TEMPLATE).unwrap()
}

pub fn config() -> LlamaConfig {
    opd_cli::config::ScratchModel {
        alphabet: "0123456789+".into(),
        layers: 1,
        hidden_size: 32,
        intermediate_size: 64,
        heads: 2,
        max_positions: 32,
        ..Default::default()
    }
    .llama_config()
}

/// A server of `model` on a free loopback port, and what stops it.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(model: Llama<Flex>, options: ServeOptions) -> Self {
        let state = ServerState::start(model, &tokenizer("0123456789+"), "tiny", options);
        Self::on(state, "127.0.0.1:0".parse().unwrap())
    }

    pub fn on(state: Arc<ServerState>, addr: SocketAddr) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, address) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                bound.send(listener.local_addr().unwrap()).unwrap();
                serve(listener, state, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        Self {
            addr: address.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
