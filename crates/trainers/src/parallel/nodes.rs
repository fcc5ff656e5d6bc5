//! Sums across nodes over TCP, in a star: node 0 listens at the run's `orchestrator` address,
//! every other node connects to it and proves the run's secret ([`super::handshake`]); for
//! each sum the others send their node's values, node 0 adds them in node order and sends the
//! total back, so every node holds the same bits.
//!
//! A frame is `count (u64 LE) · count × f32 LE`; every side knows the count it expects and
//! refuses another before reading a value, so a peer never decides what is allocated. Node 0
//! stops accepting once every node has joined; a connection that fails the handshake, comes
//! twice for one node or comes late is dropped and logged, and the run goes on.
//!
//! burn 0.21's own multi-node all-reduce (`burn-collective`'s global layer) hangs from its
//! second call (its `SyncService::sync` clears a copy of its peer list), and burn's WebSocket
//! server binds every interface and reads sizes from the peer: this star replaces both.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::handshake::{self, NodeSecret};

/// A lost or failed node, as the star saw it.
#[derive(Debug)]
pub(crate) struct NodeLost {
    /// The node.
    pub node: usize,
    /// What happened.
    pub problem: String,
}

/// This node's end of the star; every stream reads and writes with the run's timeout.
pub(crate) enum Star {
    /// Node 0: a connection from every other node, in node order.
    Hub { spokes: Vec<TcpStream> },
    /// Another node: its connection to node 0.
    Spoke { hub: TcpStream },
}

/// How long a new connection may take to complete its handshake.
const HELLO_SECONDS: u64 = 10;

impl Star {
    /// Joins the star of `nodes` nodes as `node`; node 0 listens on `address`, the others
    /// connect to it (retrying until `deadline`); every exchange after that waits at most
    /// `timeout`.
    pub fn join(
        address: &str,
        secret: &NodeSecret,
        (node, nodes): (usize, usize),
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Self, NodeLost> {
        let lost = |node, problem: String| NodeLost { node, problem };
        let target = resolve(address).map_err(|e| lost(0, e))?;
        if node == 0 {
            let listener = TcpListener::bind(target)
                .map_err(|e| lost(0, format!("cannot listen on {address}: {e}")))?;
            let spokes = gather_spokes(listener, secret, nodes, deadline)?;
            for spoke in &spokes {
                set_timeouts(spoke, timeout).map_err(|e| lost(0, e))?;
            }
            Ok(Star::Hub { spokes })
        } else {
            // Retry while node 0 is not listening yet; a refused handshake is final.
            let mut hub = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match TcpStream::connect_timeout(&target, left.max(Duration::from_millis(1))) {
                    Ok(hub) => break hub,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(lost(0, format!("cannot be reached at {address}: {e}")));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            set_timeouts(&hub, Duration::from_secs(HELLO_SECONDS)).map_err(|e| lost(0, e))?;
            handshake::connect(&mut hub, secret, node, nodes).map_err(|e| lost(0, e))?;
            set_timeouts(&hub, timeout).map_err(|e| lost(0, e))?;
            Ok(Star::Spoke { hub })
        }
    }

    /// `Σ_nodes values`, added in node order, on every node.
    pub fn sum(&mut self, values: Vec<f32>) -> Result<Vec<f32>, NodeLost> {
        let n = values.len();
        match self {
            Star::Hub { spokes } => {
                let mut total = values;
                for (i, spoke) in spokes.iter_mut().enumerate() {
                    let part = receive(spoke, n).map_err(|problem| NodeLost {
                        node: i + 1,
                        problem,
                    })?;
                    total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                }
                let frame = frame(&total);
                for (i, spoke) in spokes.iter_mut().enumerate() {
                    spoke.write_all(&frame).map_err(|e| NodeLost {
                        node: i + 1,
                        problem: format!("could not be sent the sum: {e}"),
                    })?;
                }
                Ok(total)
            }
            Star::Spoke { hub } => {
                let lost = |problem| NodeLost { node: 0, problem };
                hub.write_all(&frame(&values))
                    .map_err(|e| lost(format!("could not be sent this node's values: {e}")))?;
                receive(hub, n).map_err(lost)
            }
        }
    }
}

/// The first address `address` (`HOST:PORT`) names.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("{address:?} is not a reachable HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("{address:?} names no address"))
}

fn set_timeouts(stream: &TcpStream, timeout: Duration) -> Result<(), String> {
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("cannot set up a connection: {e}"))
}

/// Node 0: accepts connections until every node in `1..nodes` has proved itself or the
/// deadline passes. Each handshake runs on a thread of its own (a slow or silent peer holds
/// up nobody); refused, duplicate and late peers are logged and dropped.
fn gather_spokes(
    listener: TcpListener,
    secret: &NodeSecret,
    nodes: usize,
    deadline: Instant,
) -> Result<Vec<TcpStream>, NodeLost> {
    listener.set_nonblocking(true).map_err(|e| NodeLost {
        node: 0,
        problem: format!("cannot listen: {e}"),
    })?;
    let (joined, arrivals) = mpsc::channel::<(SocketAddr, Result<(usize, TcpStream), String>)>();
    let mut spokes: Vec<Option<TcpStream>> = (1..nodes).map(|_| None).collect();
    while spokes.iter().any(Option::is_none) {
        if Instant::now() >= deadline {
            let missing = spokes.iter().position(Option::is_none).unwrap_or(0) + 1;
            return Err(NodeLost {
                node: missing,
                problem: "never joined (with the run's secret)".into(),
            });
        }
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let (joined, secret) = (joined.clone(), secret.clone());
                std::thread::spawn(move || {
                    let proved = stream
                        .set_nonblocking(false)
                        .map_err(|e| e.to_string())
                        .and_then(|()| set_timeouts(&stream, Duration::from_secs(HELLO_SECONDS)))
                        .and_then(|()| handshake::accept(&mut stream, &secret, nodes));
                    let _ = joined.send((peer, proved.map(|node| (node, stream))));
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("node 0: a connection failed before its hello: {e}"),
        }
        while let Ok((peer, proved)) = arrivals.try_recv() {
            match proved {
                Ok((node, stream)) if spokes[node - 1].is_none() => spokes[node - 1] = Some(stream),
                Ok((node, _)) => {
                    tracing::warn!(
                        "node 0: dropped a second connection for node {node} from {peer}"
                    )
                }
                Err(problem) => {
                    tracing::warn!("node 0: refused a connection from {peer}: {problem}")
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The listener closes here: nobody joins a started run.
    Ok(spokes.into_iter().flatten().collect())
}

/// `count · values`, little-endian.
fn frame(values: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + 4 * values.len());
    bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
    values
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    bytes
}

/// A frame of exactly `expected` values; its count is checked before anything is allocated.
fn receive(stream: &mut impl Read, expected: usize) -> Result<Vec<f32>, String> {
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).map_err(describe)?;
    let count = u64::from_le_bytes(count);
    if count != expected as u64 {
        return Err(format!(
            "sent {count} values where this node has {expected}"
        ));
    }
    let mut bytes = vec![0u8; expected * 4];
    stream.read_exact(&mut bytes).map_err(describe)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn describe(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "closed its connection".into(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "sent nothing within the run's timeout".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> NodeSecret {
        NodeSecret::new(b"the run's secret, long enough").unwrap()
    }

    fn free_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    /// A peer without the secret: the hello, then `then` written raw.
    fn impostor(address: &str, node: u64, then: &[u8]) {
        for _ in 0..100 {
            if let Ok(mut stream) = TcpStream::connect(address) {
                let mut challenge = [0u8; 40];
                let _ = stream.read_exact(&mut challenge);
                let mut hello = node.to_le_bytes().to_vec();
                hello.extend([7u8; 64]);
                let _ = stream.write_all(&hello);
                let _ = stream.write_all(then);
                let _ = stream.read(&mut [0u8; 64]);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn impostors_do_not_end_the_run_and_frames_of_another_size_are_refused() {
        let address = free_address();
        let hub = {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut star =
                    Star::join(&address, &secret(), (0, 2), soon(), Duration::from_secs(5))
                        .unwrap();
                let first = star.sum(vec![1.0, 2.0]);
                let second = star.sum(vec![1.0, 2.0]);
                (first.unwrap(), second.map_err(|e| e.problem))
            })
        };
        // Impostors first: a node outside the run, and "node 1" followed by a huge count.
        let mut huge = 3_000_000_000u64.to_le_bytes().to_vec();
        huge.extend([0u8; 16]);
        impostor(&address, 7, &[]);
        impostor(&address, 1, &huge);
        // The real node 1 joins, sums once, then sends a frame of the wrong count.
        let mut star =
            Star::join(&address, &secret(), (1, 2), soon(), Duration::from_secs(5)).unwrap();
        assert_eq!(star.sum(vec![10.0, 20.0]).unwrap(), vec![11.0, 22.0]);
        if let Star::Spoke { hub } = &mut star {
            hub.write_all(&4_000_000_000u64.to_le_bytes()).unwrap();
        }
        let (first, second) = hub.join().unwrap();
        assert_eq!(first, vec![11.0, 22.0]);
        let problem = second.unwrap_err();
        assert!(
            problem.contains("sent 4000000000 values where this node has 2"),
            "{problem}"
        );
    }

    #[test]
    fn a_node_refuses_an_answer_of_another_size() {
        let mut answer = frame(&[1.0, 2.0, 3.0]);
        let error = receive(&mut &answer[..], 2).unwrap_err();
        assert!(
            error.contains("sent 3 values where this node has 2"),
            "{error}"
        );
        answer.truncate(12);
        assert_eq!(
            receive(&mut &answer[..], 3).unwrap_err(),
            "closed its connection"
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::parallel::fuzz_config())]

        /// Whatever bytes a peer sends, the frame reader returns the values of a frame of
        /// exactly the expected count, or an error: never a panic, never an allocation sized
        /// by the peer.
        #[test]
        fn the_frame_reader_survives_any_bytes(
            head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            expected in 0usize..8,
            honest_count in proptest::prelude::any::<bool>(),
        ) {
            // Half the cases announce the expected count, so whole and cut frames both occur.
            let bytes = if honest_count {
                [&(expected as u64).to_le_bytes()[..], &tail].concat()
            } else {
                [head, tail].concat()
            };
            let result = receive(&mut &bytes[..], expected);
            let complete = bytes.len() >= 8 + 4 * expected
                && u64::from_le_bytes(bytes[..8].try_into().unwrap()) == expected as u64;
            proptest::prop_assert_eq!(result.is_ok(), complete);
            if let Ok(values) = result {
                proptest::prop_assert_eq!(frame(&values), bytes[..8 + 4 * expected].to_vec());
            }
        }

        /// A frame whose count is any 64-bit number is refused before its values are read.
        #[test]
        fn any_announced_count_but_the_expected_one_is_refused(count in proptest::prelude::any::<u64>()) {
            proptest::prop_assume!(count != 3);
            let mut bytes = count.to_le_bytes().to_vec();
            bytes.extend([0u8; 12]);
            let error = receive(&mut &bytes[..], 3).unwrap_err();
            proptest::prop_assert!(error.contains(&format!("sent {count} values")), "{}", error);
        }
    }
}
