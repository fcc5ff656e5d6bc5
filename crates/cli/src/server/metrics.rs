//! `GET /metrics`: what an operator watches, in Prometheus' text format (as vLLM exposes it):
//! requests by route and status, their latency, the queue, the connections, and the
//! sequences and tokens scored.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The server's counters.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    /// Requests answered, by route and status.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Requests in each latency bucket (the last: above every bound), their sum in µs.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_micros: AtomicU64,
    /// Sequences and response tokens scored.
    pub sequences: AtomicU64,
    pub tokens: AtomicU64,
    /// Connections open now.
    pub connections: AtomicUsize,
}

impl Metrics {
    fn record(&self, route: String, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, status))
            .or_default() += 1;
        let bucket = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// The text exposition, with the queue's depth and capacity read by the caller.
    pub(super) fn render(&self, queued: usize, queue: usize) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let name = "opd_requests_total";
        family(
            &mut out,
            name,
            "counter",
            "Requests answered, by route and status.",
        );
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((route, status), n) in requests.iter() {
            let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        drop(requests);
        let name = "opd_request_duration_seconds";
        family(
            &mut out,
            name,
            "histogram",
            "Time from a request's arrival to its answer.",
        );
        let mut cumulative = 0;
        for (i, count) in self.latency.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = BUCKETS.get(i).map_or("+Inf".to_string(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let sum = self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
        for (name, kind, help, value) in [
            (
                "opd_queue_depth",
                "gauge",
                "Requests waiting for the scorer.",
                queued as u64,
            ),
            (
                "opd_queue_capacity",
                "gauge",
                "Requests the queue holds before answering 503.",
                queue as u64,
            ),
            (
                "opd_open_connections",
                "gauge",
                "Connections open now.",
                self.connections.load(Ordering::Relaxed) as u64,
            ),
            (
                "opd_scored_sequences_total",
                "counter",
                "Sequences scored.",
                self.sequences.load(Ordering::Relaxed),
            ),
            (
                "opd_scored_tokens_total",
                "counter",
                "Response tokens scored.",
                self.tokens.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// Middleware: counts every answer by its route (the matched path, or `other`) and status,
/// with its latency.
pub(super) async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other".to_string(), |p| p.as_str().to_string());
    let clock = Instant::now();
    let response = next.run(request).await;
    metrics.record(
        route,
        response.status().as_u16(),
        clock.elapsed().as_secs_f64(),
    );
    response
}
