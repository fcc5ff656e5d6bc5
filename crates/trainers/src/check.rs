//! The checks config values share, each an error naming the field.

use crate::error::{Result, TrainError};

/// A [`TrainError::Config`] for `field`.
pub(crate) fn config_error(
    field: &'static str,
    value: impl ToString,
    expected: &'static str,
) -> TrainError {
    TrainError::Config {
        field,
        value: value.to_string(),
        expected,
    }
}

/// A finite number above 0.
pub(crate) fn positive(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(config_error(field, value, "a finite number > 0"))
    }
}

/// A finite number at or above 0.
pub(crate) fn non_negative(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(config_error(field, value, "a finite number ≥ 0"))
    }
}

/// A number in `[0, 1]`.
pub(crate) fn unit(field: &'static str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(config_error(field, value, "a number in [0, 1]"))
    }
}

/// A count at or above `min`.
pub(crate) fn at_least(
    field: &'static str,
    value: usize,
    min: usize,
    expected: &'static str,
) -> Result<()> {
    if value >= min {
        Ok(())
    } else {
        Err(config_error(field, value, expected))
    }
}

/// A top-k size: absent, or at least 1.
pub(crate) fn top_k(field: &'static str, value: Option<usize>) -> Result<()> {
    match value {
        Some(0) => Err(config_error(field, 0, "at least 1, or absent")),
        _ => Ok(()),
    }
}

/// A divergence whose JSD weight lies in `[0, 1]` (one built in code rather than read from a
/// run file, where it is checked on reading).
pub(crate) fn divergence(field: &'static str, value: opd_divergences::Divergence) -> Result<()> {
    match value.validate() {
        Ok(_) => Ok(()),
        Err(_) => Err(config_error(
            field,
            format!("{value:?}"),
            "\"forward_kl\", \"reverse_kl\" or { jsd = β } with β in [0, 1]",
        )),
    }
}

/// PPO's clip bounds: `ε_low` in `(0, 1)`, `ε_high` above 0.
pub(crate) fn clip(low: f64, high: f64) -> Result<()> {
    positive("objective.epsilon_low", low)?;
    positive("objective.epsilon_high", high)?;
    if low >= 1.0 {
        return Err(config_error(
            "objective.epsilon_low",
            low,
            "a number in (0, 1)",
        ));
    }
    Ok(())
}

/// A constant normalizer of at least one token.
pub(crate) fn aggregation(aggregation: opd_divergences::Reduction) -> Result<()> {
    match aggregation {
        opd_divergences::Reduction::Constant(0) => Err(config_error(
            "objective.aggregation",
            "constant 0",
            "a positive number of tokens per answer",
        )),
        _ => Ok(()),
    }
}
