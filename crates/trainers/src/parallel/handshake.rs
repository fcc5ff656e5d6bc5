//! How two nodes of a run prove to each other that they hold the run's secret, before either
//! trusts a byte the other sends: a challenge and response in both directions, fixed sizes
//! only, the proofs compared in constant time.
//!
//! ```text
//! node 0 → node n:  MAGIC (8 bytes) · nonce₀ (32)
//! node n → node 0:  n (u64 LE) · nonceₙ (32) · HMAC-SHA256(secret, "node" · nonce₀ · nonceₙ · n · N)
//! node 0 → node n:  HMAC-SHA256(secret, "hub" · nonce₀ · nonceₙ · n · N)
//! ```
//!
//! `N` is the run's node count, so a node of another run with the same secret is refused too.
//! The secret is never sent; a recorded handshake cannot be replayed (fresh nonces). After the
//! handshake the connection is plain TCP: no encryption or per-frame integrity, so the nodes
//! belong on a private network or behind a TLS tunnel (`docs/parallel.md`).

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The run's shared secret (at least [`NodeSecret::MIN_BYTES`] bytes); its `Debug` shows no
/// byte of it.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeSecret(Vec<u8>);

impl NodeSecret {
    /// The shortest secret accepted.
    pub const MIN_BYTES: usize = 16;

    /// `bytes` as a secret (surrounding whitespace trimmed, as a secret read from a file or
    /// the environment carries a newline); `Err` with the reason when it is too short.
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        let bytes = bytes.trim_ascii();
        if bytes.len() < Self::MIN_BYTES {
            return Err(format!(
                "{} bytes: a node secret needs at least {} (e.g. `openssl rand -hex 32`)",
                bytes.len(),
                Self::MIN_BYTES
            ));
        }
        Ok(Self(bytes.to_vec()))
    }
}

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(…)")
    }
}

/// The first bytes node 0 sends: a connection to anything else fails at once.
const MAGIC: &[u8; 8] = b"opd-star";
const NONCE: usize = 32;
const PROOF: usize = 32;

/// The MAC of what the two sides prove: the role, both nonces, the node and the run's size.
fn mac(
    secret: &NodeSecret,
    role: &[u8],
    hub: &[u8],
    spoke: &[u8],
    node: u64,
    nodes: u64,
) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key length");
    for part in [role, hub, spoke, &node.to_le_bytes(), &nodes.to_le_bytes()] {
        mac.update(part);
    }
    mac
}

fn nonce() -> [u8; NONCE] {
    let mut bytes = [0u8; NONCE];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Node 0's side, on a fresh connection: the node it proved to be, in `1..nodes`; `Err` says
/// why the peer was refused (nothing it sent is trusted before that).
pub(crate) fn accept(
    stream: &mut (impl Read + Write),
    secret: &NodeSecret,
    nodes: usize,
) -> Result<usize, String> {
    let hub = nonce();
    stream
        .write_all(&[&MAGIC[..], &hub].concat())
        .map_err(|e| format!("could not send the challenge: {e}"))?;
    let mut answer = [0u8; 8 + NONCE + PROOF];
    stream
        .read_exact(&mut answer)
        .map_err(|e| format!("no complete hello: {e}"))?;
    let node = u64::from_le_bytes(answer[..8].try_into().expect("8 bytes"));
    let spoke = &answer[8..8 + NONCE];
    let proved = mac(secret, b"node", &hub, spoke, node, nodes as u64)
        .verify_slice(&answer[8 + NONCE..])
        .is_ok();
    if !proved {
        return Err(format!(
            "its hello (claiming node {node}) does not prove the run's secret"
        ));
    }
    if node == 0 || node >= nodes as u64 {
        return Err(format!("it claims node {node} of a run of {nodes} nodes"));
    }
    let reply: [u8; PROOF] = mac(secret, b"hub", &hub, spoke, node, nodes as u64)
        .finalize()
        .into_bytes()
        .into();
    stream
        .write_all(&reply)
        .map_err(|e| format!("could not answer the hello: {e}"))?;
    Ok(node as usize)
}

/// Node `node`'s side, on its connection to node 0: `Err` says why node 0 is not trusted.
pub(crate) fn connect(
    stream: &mut (impl Read + Write),
    secret: &NodeSecret,
    node: usize,
    nodes: usize,
) -> Result<(), String> {
    let mut challenge = [0u8; 8 + NONCE];
    stream
        .read_exact(&mut challenge)
        .map_err(|e| format!("no challenge from node 0: {e}"))?;
    if &challenge[..8] != MAGIC {
        return Err("the address does not answer as node 0 of an opd run".into());
    }
    let hub = &challenge[8..];
    let spoke = nonce();
    let own: [u8; PROOF] = mac(secret, b"node", hub, &spoke, node as u64, nodes as u64)
        .finalize()
        .into_bytes()
        .into();
    stream
        .write_all(&[&(node as u64).to_le_bytes()[..], &spoke, &own].concat())
        .map_err(|e| format!("could not send the hello: {e}"))?;
    let mut reply = [0u8; PROOF];
    stream.read_exact(&mut reply).map_err(|e| {
        format!("node 0 refused this node (another secret, node count or node index?): {e}")
    })?;
    let proved = mac(secret, b"hub", hub, &spoke, node as u64, nodes as u64)
        .verify_slice(&reply)
        .is_ok();
    if !proved {
        return Err("node 0 does not prove the run's secret".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    fn secret(s: &str) -> NodeSecret {
        NodeSecret::new(s.as_bytes()).unwrap()
    }

    fn shake(
        hub: &str,
        spoke: &str,
        node: usize,
        nodes: (usize, usize),
    ) -> (Result<usize, String>, Result<(), String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let spoke = secret(spoke);
        let client = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            connect(&mut stream, &spoke, node, nodes.1)
        });
        let (mut stream, _) = listener.accept().unwrap();
        let accepted = accept(&mut stream, &secret(hub), nodes.0);
        drop(stream);
        (accepted, client.join().unwrap())
    }

    #[test]
    fn nodes_with_the_secret_join_and_others_are_refused() {
        let key = "a secret of the run, 32 bytes ok";
        let (hub, spoke) = shake(key, key, 2, (3, 3));
        assert_eq!(hub, Ok(2));
        assert_eq!(spoke, Ok(()));
        let (hub, spoke) = shake(key, "another secret of another run!!", 1, (3, 3));
        assert!(hub.unwrap_err().contains("does not prove"));
        assert!(spoke.is_err());
        // The same secret, another run size: refused by both proofs.
        let (hub, _) = shake(key, key, 1, (3, 2));
        assert!(hub.is_err());
        // A node index outside the run, even with the secret.
        let (hub, _) = shake(key, key, 7, (3, 3));
        assert!(hub.is_err());
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_secret() {
        assert!(
            NodeSecret::new(b"  short\n")
                .unwrap_err()
                .contains("at least 16")
        );
        let s = secret("0123456789abcdef0123\n");
        assert_eq!(format!("{s:?}"), "NodeSecret(…)");
    }

    /// A peer that sends `input` and keeps what it is sent.
    struct Peer {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Peer {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::parallel::fuzz_config())]

        /// Bytes from a peer without the secret, of any length, are refused on either side,
        /// and node 0 sends nothing past its challenge to such a peer.
        #[test]
        fn a_peer_without_the_secret_is_refused_whatever_it_sends(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            node in 0usize..4,
        ) {
            let key = secret("a secret of the run, 32 bytes ok");
            let mut peer = Peer { input: std::io::Cursor::new(bytes.clone()), output: Vec::new() };
            proptest::prop_assert!(accept(&mut peer, &key, 3).is_err());
            proptest::prop_assert_eq!(peer.output.len(), 8 + NONCE);
            let mut hub = Peer { input: std::io::Cursor::new(bytes), output: Vec::new() };
            proptest::prop_assert!(connect(&mut hub, &key, node.max(1), 3).is_err());
        }
    }
}
