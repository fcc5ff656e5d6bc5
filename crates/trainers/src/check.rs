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
