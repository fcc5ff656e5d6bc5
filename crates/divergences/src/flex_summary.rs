//! The CPU kernel of [`crate::summarize`]: per row of logits, the top `k` by selection (one
//! pass, `O(V + k · inserted)`, where burn's `topk` sorts all `V`) and the entropy from one
//! exponential pass, in parallel over rows. The selection also picks the support of the fused
//! top-k divergence kernel (`flex.rs`).

use crate::fast_exp::exp;
use crate::flex_lanes::{BLOCK, LANES, max, threads};
use crate::row_summary::RowSummary;

/// The [`RowSummary`] of row-major logits `z` `[N, V]`.
pub(crate) fn summarize(z: &[f32], vocab: usize, temperature: f64, k: usize) -> RowSummary {
    let inv_tau = (1.0 / temperature) as f32;
    let rows: Vec<&[f32]> = z.chunks(vocab.max(1)).collect();
    let per_thread = rows.len().div_ceil(threads()).max(1);
    let parts: Vec<RowSummary> = std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(per_thread)
            .map(|rows| scope.spawn(move || summarize_part(rows, inv_tau, k)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("summary thread"))
            .collect()
    });
    let mut all = RowSummary {
        entropy: Vec::with_capacity(rows.len()),
        ids: Vec::with_capacity(rows.len() * k),
        log_probs: Vec::with_capacity(rows.len() * k),
        k,
    };
    for part in parts {
        all.entropy.extend(part.entropy);
        all.ids.extend(part.ids);
        all.log_probs.extend(part.log_probs);
    }
    all
}

/// The [`RowSummary`] of some rows, on this thread.
fn summarize_part(rows: &[&[f32]], inv_tau: f32, k: usize) -> RowSummary {
    let mut part = RowSummary {
        entropy: Vec::with_capacity(rows.len()),
        ids: Vec::with_capacity(rows.len() * k),
        log_probs: Vec::with_capacity(rows.len() * k),
        k,
    };
    let mut top = Vec::with_capacity(k + 1);
    for row in rows {
        top_k(row, k, &mut top);
        let (log_norm, h) = log_norm_and_entropy(row, inv_tau);
        part.entropy.push(h);
        for &(value, id) in &top {
            part.ids.push(id as i64);
            part.log_probs.push(value * inv_tau - log_norm);
        }
    }
    part
}

/// The `k` largest `(z_v, v)` of a row into `top`, largest first, lower ids first among equal
/// values. Blocks of [`LANES`] whose maximum does not beat the current `k`-th are skipped. A
/// NaN ranks as `−∞` (its row's entropy is NaN, which shows it).
pub(crate) fn top_k(row: &[f32], k: usize, top: &mut Vec<(f32, usize)>) {
    top.clear();
    if k == 0 {
        return;
    }
    let insert = |top: &mut Vec<(f32, usize)>, value: f32, id: usize| {
        let value = if value.is_nan() {
            f32::NEG_INFINITY
        } else {
            value
        };
        let at = top.partition_point(|&(held, _)| held >= value);
        top.insert(at, (value, id));
        top.truncate(k);
    };
    let (blocks, rest) = row.as_chunks::<LANES>();
    for (b, block) in blocks.iter().enumerate() {
        if top.len() == k && block.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) <= top[k - 1].0
        {
            continue;
        }
        for (l, &value) in block.iter().enumerate() {
            if top.len() < k || value > top[k - 1].0 {
                insert(top, value, b * LANES + l);
            }
        }
    }
    let offset = blocks.len() * LANES;
    for (l, &value) in rest.iter().enumerate() {
        if top.len() < k || value > top[k - 1].0 {
            insert(top, value, offset + l);
        }
    }
}

/// Where [`exp`] flushes to its smallest value: `e^y · y` stays finite (and negligible) below.
const MIN_EXPONENT: f32 = -87.336_55;

/// `(log Σ_v e^{x_v}, H)` for `x = z / τ`: with `m = max x`, `s = Σ e^{x−m}` and
/// `t = Σ e^{x−m} (x − m)`, the log-normaliser is `m + ln s` and the entropy
/// `H = −Σ p (x − m − ln s) = ln s − t / s`. Sums in [`LANES`] f32 lanes per [`BLOCK`], totals
/// in f64. Exponents are floored at [`MIN_EXPONENT`], so a masked logit (`−∞`) adds nothing.
fn log_norm_and_entropy(row: &[f32], inv_tau: f32) -> (f32, f32) {
    let m = max(row) * inv_tau;
    let (mut s, mut t) = (0f64, 0f64);
    for block in row.chunks(BLOCK) {
        let (lanes, rest) = block.as_chunks::<LANES>();
        let (mut acc_s, mut acc_t) = ([0f32; LANES], [0f32; LANES]);
        for x in lanes {
            for l in 0..LANES {
                let y = (x[l] * inv_tau - m).max(MIN_EXPONENT);
                let e = exp(y);
                acc_s[l] += e;
                acc_t[l] += e * y;
            }
        }
        for &x in rest {
            let y = (x * inv_tau - m).max(MIN_EXPONENT);
            let e = exp(y);
            s += e as f64;
            t += (e * y) as f64;
        }
        s += acc_s.iter().sum::<f32>() as f64;
        t += acc_t.iter().sum::<f32>() as f64;
    }
    let ln_s = s.ln();
    ((m as f64 + ln_s) as f32, (ln_s - t / s) as f32)
}

#[cfg(test)]
mod tests {
    use super::{log_norm_and_entropy, top_k};

    #[test]
    fn selection_keeps_the_largest_in_order_with_lower_ids_first_among_ties() {
        let row: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect();
        let mut top = Vec::new();
        top_k(&row, 5, &mut top);
        let mut sorted: Vec<(f32, usize)> = row.iter().copied().zip(0..).collect();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(top, sorted[..5]);
        let ties = vec![1.0f32; 40];
        top_k(&ties, 3, &mut top);
        assert_eq!(top, vec![(1.0, 0), (1.0, 1), (1.0, 2)]);
        top_k(&[f32::NEG_INFINITY, 2.0], 2, &mut top);
        assert_eq!(top, vec![(2.0, 1), (f32::NEG_INFINITY, 0)]);
    }

    #[test]
    fn entropy_of_a_uniform_row_is_log_v_and_of_a_peak_is_zero() {
        let (log_norm, h) = log_norm_and_entropy(&[0.5f32; 1000], 1.0);
        assert!((h as f64 - 1000f64.ln()).abs() < 1e-5, "{h}");
        assert!((log_norm as f64 - (0.5 + 1000f64.ln())).abs() < 1e-5);
        let mut peak = vec![-1e4f32; 70];
        peak[3] = 0.0;
        let (log_norm, h) = log_norm_and_entropy(&peak, 1.0);
        assert!(h.abs() < 1e-6 && log_norm.abs() < 1e-6, "{h} {log_norm}");
    }
}
