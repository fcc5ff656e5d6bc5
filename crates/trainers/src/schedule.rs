//! The learning-rate schedule: linear warmup, then cosine decay.

use crate::config::OptimizerConfig;

/// Learning rate at optimizer step `s` (0-based) of `total`, with peak `η`, warmup `w` and
/// floor ratio `m`:
/// `η (s + 1) / w` for `s < w`, then `η (m + (1 − m) · ½ (1 + cos(π p)))` with
/// `p = (s − w) / max(1, total − w − 1)`, so the last step runs at `m · η`.
pub fn learning_rate(config: &OptimizerConfig, step: usize, total: usize) -> f64 {
    let peak = config.learning_rate;
    let warmup = config.warmup_steps;
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup + 1).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let floor = config.min_lr_ratio;
    peak * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let config = OptimizerConfig {
            learning_rate: 1.0,
            warmup_steps: 4,
            min_lr_ratio: 0.1,
            ..OptimizerConfig::default()
        };
        let lr: Vec<f64> = (0..13).map(|s| learning_rate(&config, s, 13)).collect();
        assert_eq!(&lr[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert!(
            (lr[12] - 0.1).abs() < 1e-12,
            "last step at the floor: {}",
            lr[12]
        );
        // Halfway through the decay (step 8 of 4..=12) the cosine term is ½.
        assert!((lr[8] - 0.55).abs() < 1e-12, "{}", lr[8]);
        assert!(lr[4..].windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn a_floor_of_one_is_a_constant_rate() {
        let config = OptimizerConfig {
            learning_rate: 3e-4,
            min_lr_ratio: 1.0,
            ..OptimizerConfig::default()
        };
        assert!((0..10).all(|s| learning_rate(&config, s, 10) == 3e-4));
    }
}
