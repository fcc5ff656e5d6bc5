//! RoPE's rotation on the host, both ways: the kernel of the flex backend's fused rotation
//! ([`crate::rope`]) and of its backward ([`crate::rope_grad`]).

/// Which way [`rotate`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// `y[b, h, t] = R(θ_bt) x[b, t, h]`: token-major in, head-major out (the forward).
    ToHeads,
    /// `x[b, t, h] = R(θ_bt)ᵀ y[b, h, t]`: head-major in, token-major out (the backward: a
    /// rotation's transpose is its inverse).
    BackToTokens,
}

/// RoPE's rotation of each pair `(v_i, v_{i+hd/2})` at the angle of row `b`, slot `t`, for
/// every head, with `[cos, sin]` tables `[B, T, hd/2]`; `dims` are `[B, T, heads, hd]` (see
/// [`Direction`] for the layouts). Forward: `(v₁ cos − v₂ sin, v₂ cos + v₁ sin)`; back:
/// `(v₁ cos + v₂ sin, v₂ cos − v₁ sin)`.
pub(crate) fn rotate(
    v: &[f32],
    [rows, len, heads, hd]: [usize; 4],
    [cos, sin]: &[Vec<f32>; 2],
    direction: Direction,
) -> Vec<f32> {
    use rayon::prelude::*;

    let half = hd / 2;
    let token_major = |b: usize, t: usize, h: usize| ((b * len + t) * heads + h) * hd;
    let back = direction == Direction::BackToTokens;
    let sign = if back { -1.0 } else { 1.0 };
    // Row `b`, head `h` of the head-major side, `[T, hd]`.
    let task = |bh: usize, head_major: &mut [f32]| {
        let (b, h) = (bh / heads, bh % heads);
        for t in 0..len {
            let table = (b * len + t) * half;
            let (c, s) = (&cos[table..table + half], &sin[table..table + half]);
            let src = if back {
                &v[(bh * len + t) * hd..][..hd]
            } else {
                &v[token_major(b, t, h)..][..hd]
            };
            let (x1, x2) = src.split_at(half);
            let (y1, y2) = head_major[t * hd..(t + 1) * hd].split_at_mut(half);
            for i in 0..half {
                y1[i] = x1[i] * c[i] - sign * (x2[i] * s[i]);
                y2[i] = x2[i] * c[i] + sign * (x1[i] * s[i]);
            }
        }
    };
    let mut out = vec![0f32; v.len()];
    if !back {
        out.par_chunks_mut(len * hd)
            .enumerate()
            .for_each(|(bh, part)| task(bh, part));
        return out;
    }
    let parts: Vec<Vec<f32>> = (0..rows * heads)
        .into_par_iter()
        .map(|bh| {
            let mut part = vec![0f32; len * hd];
            task(bh, &mut part);
            part
        })
        .collect();
    for (bh, part) in parts.into_iter().enumerate() {
        let (b, h) = (bh / heads, bh % heads);
        for t in 0..len {
            let at = token_major(b, t, h);
            out[at..at + hd].copy_from_slice(&part[t * hd..(t + 1) * hd]);
        }
    }
    out
}
