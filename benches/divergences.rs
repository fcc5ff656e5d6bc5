//! Criterion benches: forward + backward of full-vocabulary, top-k (k = 64) and sampled-token
//! divergences at V = 49,152 (SmolLM2) and 151,936 (Qwen3), N = 512 and 2,048 positions.
//!
//! `cargo bench -p opd-divergences --bench divergences`

mod common;

use common::{Inputs, Kind, forward_backward};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("divergence_forward_backward");
    group.sample_size(10);
    for vocab in [49_152, 151_936] {
        for n in [512, 2_048] {
            let inputs = Inputs::new(n, vocab);
            for kind in Kind::ALL {
                group.bench_with_input(
                    BenchmarkId::new(kind.name(), format!("V={vocab}/N={n}")),
                    &inputs,
                    |b, inputs| b.iter(|| forward_backward(kind, inputs)),
                );
            }
        }
    }
    group.finish();
}

criterion_group!(divergence_benches, benches);
criterion_main!(divergence_benches);
