//! What the CPU kernels share: the thread count, and reductions in independent lanes (float
//! reductions only vectorize when the order is ours to choose).

/// Independent accumulators: float reductions only vectorize when the order is ours to choose.
pub(crate) const LANES: usize = 16;
/// Elements summed in f32 before the partial sum moves to the f64 total.
pub(crate) const BLOCK: usize = 1024;

pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `max_i z_i`, in `LANES` independent lanes.
pub(crate) fn max(z: &[f32]) -> f32 {
    let (lanes, rest) = z.as_chunks::<LANES>();
    let mut acc = [f32::NEG_INFINITY; LANES];
    for x in lanes {
        for l in 0..LANES {
            acc[l] = acc[l].max(x[l]);
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}
