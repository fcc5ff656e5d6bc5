//! Sums across nodes over burn's WebSocket transport (`burn-communication`), in a star: node 0
//! listens at the run's `orchestrator` address, every other node connects to it; for each sum
//! the others send their node's values, node 0 adds them in node order and sends the total
//! back, so every node holds the same bits.
//!
//! burn 0.21's own multi-node all-reduce (`burn-collective`'s global layer) hangs from its
//! second call: its `SyncService::sync` clears a copy of its list of synced peers, not the
//! list, so the next sync never sees a complete set. This star replaces it until burn 0.22
//! (`burn::tensor::distributed`).

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use burn_communication::websocket::{WsClient, WsClientChannel, WsServer, WsServerChannel};
use burn_communication::{Address, CommunicationChannel, Message, ProtocolClient, ProtocolServer};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// A lost or failed node, as the star saw it.
#[derive(Debug)]
pub(crate) struct NodeLost {
    /// The node.
    pub node: usize,
    /// What happened.
    pub problem: String,
}

/// This node's end of the star.
pub(crate) enum Star {
    /// Node 0: a connection from every other node, in node order.
    Hub {
        runtime: Runtime,
        spokes: Vec<WsServerChannel>,
    },
    /// Another node: its connection to node 0.
    Spoke {
        runtime: Runtime,
        hub: Box<WsClientChannel>,
    },
}

const ROUTE: &str = "opd-exchange";

impl Star {
    /// Joins the star of `nodes` nodes as `node`; node 0 listens on `address`'s port, the
    /// others connect to it (retrying until `deadline`).
    pub fn join(
        address: &str,
        node: usize,
        nodes: usize,
        deadline: Instant,
    ) -> Result<Self, NodeLost> {
        let lost = |node, problem: String| NodeLost { node, problem };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| lost(node, format!("an async runtime: {e}")))?;
        if node == 0 {
            let port = address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .ok_or_else(|| lost(0, format!("{address:?} is not HOST:PORT")))?;
            // burn's server logs a failed bind and carries on: check the port first.
            drop(
                std::net::TcpListener::bind(("0.0.0.0", port))
                    .map_err(|e| lost(0, format!("cannot listen on port {port}: {e}")))?,
            );
            let (joined, mut arrivals) = mpsc::unbounded_channel::<(usize, WsServerChannel)>();
            let server = WsServer::new(port).route(ROUTE, move |mut channel: WsServerChannel| {
                let joined = joined.clone();
                async move {
                    // A node's first message is its index.
                    if let Ok(Some(hello)) = channel.recv().await
                        && let Ok(bytes) = <[u8; 8]>::try_from(&hello.data[..])
                    {
                        let _ = joined.send((u64::from_le_bytes(bytes) as usize, channel));
                    }
                }
            });
            runtime.spawn(server.serve(std::future::pending::<()>()));
            let mut spokes: Vec<Option<WsServerChannel>> = (1..nodes).map(|_| None).collect();
            runtime.block_on(async {
                while spokes.iter().any(Option::is_none) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, arrivals.recv()).await {
                        Ok(Some((n, channel))) if (1..nodes).contains(&n) => {
                            spokes[n - 1] = Some(channel)
                        }
                        Ok(Some((n, _))) => {
                            return Err(lost(n, format!("joined a run of {nodes} nodes")));
                        }
                        _ => {
                            let missing = spokes.iter().position(Option::is_none).unwrap_or(0) + 1;
                            return Err(lost(missing, "never connected".into()));
                        }
                    }
                }
                Ok(())
            })?;
            let spokes = spokes.into_iter().map(|s| s.expect("all joined")).collect();
            Ok(Star::Hub { runtime, spokes })
        } else {
            let target: Address = format!("ws://{address}").parse().expect("infallible");
            let hub = runtime.block_on(async {
                loop {
                    if let Some(mut hub) = WsClient::connect(target.clone(), ROUTE).await {
                        let hello = (node as u64).to_le_bytes().to_vec();
                        hub.send(Message::new(hello.into()))
                            .await
                            .map_err(|e| lost(0, format!("{e:?}")))?;
                        return Ok(hub);
                    }
                    if Instant::now() >= deadline {
                        return Err(lost(0, format!("cannot be reached at {address}")));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })?;
            Ok(Star::Spoke {
                runtime,
                hub: Box::new(hub),
            })
        }
    }

    /// `Σ_nodes values`, added in node order, on every node.
    pub fn sum(&mut self, values: Vec<f32>) -> Result<Vec<f32>, NodeLost> {
        // burn's channels panic on a connection that ends without a close frame.
        let current = Cell::new(0);
        catch_unwind(AssertUnwindSafe(|| self.sum_unguarded(values, &current))).unwrap_or_else(
            |_| {
                Err(NodeLost {
                    node: current.get(),
                    problem: "lost its connection".into(),
                })
            },
        )
    }

    /// [`Self::sum`]; `current` the node talked to now.
    fn sum_unguarded(
        &mut self,
        values: Vec<f32>,
        current: &Cell<usize>,
    ) -> Result<Vec<f32>, NodeLost> {
        match self {
            Star::Hub { runtime, spokes } => runtime.block_on(async {
                let mut total = values;
                for (i, spoke) in spokes.iter_mut().enumerate() {
                    let node = i + 1;
                    current.set(node);
                    let part = receive(spoke, node).await?;
                    if part.len() != total.len() {
                        return Err(NodeLost {
                            node,
                            problem: format!(
                                "sent {} values where node 0 has {}",
                                part.len(),
                                total.len()
                            ),
                        });
                    }
                    total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                }
                let bytes = bytes::Bytes::from(to_bytes(&total));
                for (i, spoke) in spokes.iter_mut().enumerate() {
                    current.set(i + 1);
                    spoke
                        .send(Message::new(bytes.clone()))
                        .await
                        .map_err(|e| NodeLost {
                            node: i + 1,
                            problem: format!("{e:?}"),
                        })?;
                }
                Ok(total)
            }),
            Star::Spoke { runtime, hub } => runtime.block_on(async {
                hub.send(Message::new(to_bytes(&values).into()))
                    .await
                    .map_err(|e| NodeLost {
                        node: 0,
                        problem: format!("{e:?}"),
                    })?;
                receive(&mut **hub, 0).await
            }),
        }
    }
}

async fn receive<C: CommunicationChannel>(
    channel: &mut C,
    node: usize,
) -> Result<Vec<f32>, NodeLost> {
    match channel.recv().await {
        Ok(Some(message)) => Ok(message
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Ok(None) => Err(NodeLost {
            node,
            problem: "closed its connection".into(),
        }),
        Err(e) => Err(NodeLost {
            node,
            problem: format!("{e:?}"),
        }),
    }
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
