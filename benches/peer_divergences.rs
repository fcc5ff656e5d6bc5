//! Our side of the PyTorch comparison: time and peak memory of one forward + backward.
//!
//! `peer_divergences KIND N V REPEATS` prints one JSON line. Peak memory is the resident-set
//! high-water mark during the measured runs minus the resident set before them (the inputs
//! already allocated): the memory the computation adds beyond the logits. Linux only.
//! Driven by `benches/peer/compare.py`, which runs PyTorch the same way.

mod common;

use std::time::Instant;

use common::{Inputs, Kind, forward_backward};

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("a VmHWM/VmRSS line")
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [kind, n, vocab, repeats] = args.as_slice() else {
        eprintln!(
            "usage: peer_divergences KIND N V REPEATS   (KIND: full-jsd0.5 | full-reverse-kl | topk64-reverse-kl | sampled-k3)"
        );
        std::process::exit(2);
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .expect("a known kind");
    let (n, vocab, repeats): (usize, usize, usize) = (
        n.parse().unwrap(),
        vocab.parse().unwrap(),
        repeats.parse().unwrap(),
    );
    let inputs = Inputs::new(n, vocab);
    drop(forward_backward(kind, &inputs)); // warm-up
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the high-water mark");
    let base = status_kb("VmRSS:");
    let mut times = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        let grad = forward_backward(kind, &inputs);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(grad);
    }
    let peak = status_kb("VmHWM:").saturating_sub(base);
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\": \"opd\", \"kind\": \"{}\", \"n\": {n}, \"v\": {vocab}, \"ms\": {:.1}, \"peak_mb\": {:.1}}}",
        kind.name(),
        times[times.len() / 2],
        peak as f64 / 1024.0
    );
}
