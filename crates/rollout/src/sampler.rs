//! Drawing one token from one row of logits on the host, exactly: the processed distribution
//! of [`SamplingParams`], the draw by inverse CDF from a uniform, and both log-probabilities
//! of the drawn token (the model's own at temperature 1, and the processed one it was drawn
//! from).

use crate::params::SamplingParams;

/// A drawn token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// The token id.
    pub token: u32,
    /// `log π(y)`: log-softmax of the raw logits (temperature 1, no truncation).
    pub logprob: f32,
    /// `log q(y)` under the processed distribution it was drawn from (0 when greedy).
    pub sampling_logprob: f32,
}

/// `log Σ_i exp(l_i)` and `max_i l_i`, in f64.
pub(crate) fn log_sum_exp(logits: &[f32]) -> (f64, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (max as f64 + sum.ln(), max)
}

/// Orders candidates by logit descending, then id ascending (a total, reproducible order).
fn by_likelihood(logits: &[f32]) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
    move |&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    }
}

/// The kept tokens and their unnormalized weights `exp((l − max)/τ)`, in the order the
/// inverse CDF walks them (most likely first when truncated by top-k or top-p, ids otherwise).
pub fn processed(logits: &[f32], params: &SamplingParams) -> (Vec<u32>, Vec<f64>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let tau = params.temperature;
    let weight = |id: u32| (((logits[id as usize] - max) as f64) / tau).exp();
    let vocab = logits.len();
    let truncating = params.top_k.is_some() || params.top_p < 1.0;
    let mut ids: Vec<u32> = if truncating {
        let mut ids: Vec<u32> = (0..vocab as u32).collect();
        let k = params.top_k.unwrap_or(vocab).min(vocab);
        if k < vocab {
            ids.select_nth_unstable_by(k - 1, by_likelihood(logits));
            ids.truncate(k);
        }
        if params.top_p < 1.0 {
            nucleus(&mut ids, logits, &weight, params.top_p);
        } else {
            ids.sort_unstable_by(by_likelihood(logits));
        }
        ids
    } else {
        (0..vocab as u32).collect()
    };
    let mut weights: Vec<f64> = ids.iter().map(|&id| weight(id)).collect();
    if params.min_p > 0.0 {
        // The largest weight is exp(0) = 1, so the floor is min_p itself.
        let keep: Vec<bool> = weights.iter().map(|&w| w >= params.min_p).collect();
        let mut flags = keep.iter();
        ids.retain(|_| *flags.next().unwrap());
        weights.retain(|&w| w >= params.min_p);
    }
    (ids, weights)
}

/// Sorts the most likely candidates and cuts `ids` to the smallest prefix with mass ≥ `p` of
/// the candidates' total, sorting progressively larger prefixes (64, 256, …) until it does.
fn nucleus(ids: &mut Vec<u32>, logits: &[f32], weight: &impl Fn(u32) -> f64, p: f64) {
    let total: f64 = ids.iter().map(|&id| weight(id)).sum();
    let target = p * total;
    let mut sorted = 64.min(ids.len());
    loop {
        if sorted < ids.len() {
            ids.select_nth_unstable_by(sorted - 1, by_likelihood(logits));
        }
        ids[..sorted].sort_unstable_by(by_likelihood(logits));
        let mut mass = 0.0;
        for (i, &id) in ids[..sorted].iter().enumerate() {
            mass += weight(id);
            if mass >= target {
                ids.truncate(i + 1);
                return;
            }
        }
        if sorted == ids.len() {
            return;
        }
        sorted = (sorted * 4).min(ids.len());
    }
}

/// Draws a token from `logits` with the uniform `u ∈ [0, 1)`: the first kept token whose
/// cumulative weight exceeds `u·Σw`. Greedy (`τ = 0`) takes the argmax and ignores `u`.
pub fn draw(logits: &[f32], params: &SamplingParams, u: f64) -> Draw {
    let (lse, _) = log_sum_exp(logits);
    let logprob = |id: u32| (logits[id as usize] as f64 - lse) as f32;
    if params.temperature == 0.0 {
        let token = (0..logits.len() as u32)
            .min_by(by_likelihood(logits))
            .expect("non-empty vocabulary");
        return Draw {
            token,
            logprob: logprob(token),
            sampling_logprob: 0.0,
        };
    }
    let (ids, weights) = processed(logits, params);
    let total: f64 = weights.iter().sum();
    let target = u * total;
    let mut cumulative = 0.0;
    let mut chosen = ids.len() - 1;
    for (i, &w) in weights.iter().enumerate() {
        cumulative += w;
        if cumulative > target {
            chosen = i;
            break;
        }
    }
    Draw {
        token: ids[chosen],
        logprob: logprob(ids[chosen]),
        sampling_logprob: (weights[chosen] / total).ln() as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_k: Option<usize>, top_p: f64, min_p: f64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::default()
        }
    }

    /// Probabilities 0.4, 0.3, 0.2, 0.1 at ids 2, 0, 3, 1.
    fn logits() -> Vec<f32> {
        [0.3f32, 0.1, 0.4, 0.2].iter().map(|p| p.ln()).collect()
    }

    fn kept(p: &SamplingParams) -> Vec<u32> {
        let mut ids = processed(&logits(), p).0;
        ids.sort();
        ids
    }

    #[test]
    fn truncation_keeps_the_documented_sets() {
        assert_eq!(kept(&params(1.0, None, 1.0, 0.0)), [0, 1, 2, 3]);
        assert_eq!(kept(&params(1.0, Some(2), 1.0, 0.0)), [0, 2]);
        // 0.4 < 0.5 ≤ 0.4 + 0.3: the nucleus is {2, 0}.
        assert_eq!(kept(&params(1.0, None, 0.5, 0.0)), [0, 2]);
        assert_eq!(kept(&params(1.0, None, 0.75, 0.0)), [0, 2, 3]);
        // min_p 0.45: keep p ≥ 0.18.
        assert_eq!(kept(&params(1.0, None, 1.0, 0.45)), [0, 2, 3]);
        // top-k 3 renormalizes to 4/9, 3/9, 2/9; top-p 0.7 keeps the first two.
        assert_eq!(kept(&params(1.0, Some(3), 0.7, 0.0)), [0, 2]);
    }

    #[test]
    fn draws_report_both_log_probs() {
        let p = params(1.0, Some(2), 1.0, 0.0);
        // Kept in order [2, 0] with mass 4/7, 3/7.
        let first = draw(&logits(), &p, 0.1);
        assert_eq!(first.token, 2);
        assert!((first.logprob - 0.4f32.ln()).abs() < 1e-6);
        assert!((first.sampling_logprob - (4.0f32 / 7.0).ln()).abs() < 1e-6);
        let second = draw(&logits(), &p, 0.9);
        assert_eq!(second.token, 0);
        let greedy = draw(&logits(), &params(0.0, None, 1.0, 0.0), 0.5);
        assert_eq!((greedy.token, greedy.sampling_logprob), (2, 0.0));
    }

    #[test]
    fn the_nucleus_grows_past_the_first_sorted_block() {
        // 1,000 equal tokens: p = 0.9 needs 900 of them, beyond the first 64 and 256.
        let flat = vec![0.0f32; 1000];
        let (ids, _) = processed(&flat, &params(1.0, None, 0.9, 0.0));
        assert_eq!(ids.len(), 900);
        assert_eq!(ids[..3], [0, 1, 2], "ties go to the lowest ids");
    }
}
