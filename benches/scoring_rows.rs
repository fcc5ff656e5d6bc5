//! Shared by the teacher benches: pseudo-random rows to score and a best-of-two timer.

use std::time::Instant;

use opd_policy::SequenceBatch;

/// Rows of pseudo-random ids: `batch` contexts of `context` tokens, responses of `response`.
pub fn rows(batch: usize, context: usize, response: usize, vocab: usize) -> SequenceBatch {
    let ids = |b: usize, n: usize, salt: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((b * 7_919 + i * 104_729 + salt) % vocab) as u32)
            .collect()
    };
    SequenceBatch::new(
        (0..batch).map(|b| ids(b, context, 13)).collect(),
        (0..batch).map(|b| ids(b, response, 29)).collect(),
    )
    .unwrap()
}

/// Best of 2 timed runs of `f` (the first one warms up).
pub fn best(mut f: impl FnMut()) -> f64 {
    (0..2)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
