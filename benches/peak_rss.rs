//! Resident memory of the bench process, shared by the peer benches (Linux `/proc/self/status`;
//! 0 elsewhere).

/// A `/proc/self/status` field in MB.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident set size of this process, MB (`VmHWM`).
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident set size of this process now, MB (`VmRSS`).
#[allow(dead_code)]
pub fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}
