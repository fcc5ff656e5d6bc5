//! Input validation shared by the public functions.

use std::sync::Arc;

use burn::tensor::{Bool, Int, Tensor, backend::Backend};

use crate::chunks::Rows;
use crate::error::{DivergenceError, Result};

pub(crate) fn same_shape(what: &'static str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(DivergenceError::ShapeMismatch {
            what,
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        })
    }
}

pub(crate) fn non_empty(what: &'static str, shape: &[usize]) -> Result<()> {
    if shape.contains(&0) {
        Err(DivergenceError::Empty {
            what,
            shape: shape.to_vec(),
        })
    } else {
        Ok(())
    }
}

/// Fails unless every element of `values` is finite (reads them to the host).
pub(crate) fn finite<B: Backend, const D: usize>(
    what: &'static str,
    values: &Tensor<B, D>,
) -> Result<()> {
    let data = values.to_data().convert::<f32>();
    let values = data.as_slice::<f32>().unwrap_or(&[]);
    let mut bad = values.iter().enumerate().filter(|(_, v)| !v.is_finite());
    match bad.next() {
        None => Ok(()),
        Some((first, _)) => Err(DivergenceError::NonFinite {
            what,
            count: 1 + bad.count(),
            total: values.len(),
            first,
        }),
    }
}

/// Fails unless every id lies in `0..vocab`.
pub(crate) fn ids_in_vocab<B: Backend, const D: usize>(
    ids: &Tensor<B, D, Int>,
    vocab: usize,
) -> Result<()> {
    let data = ids.to_data().convert::<i64>();
    let ids = data.as_slice::<i64>().unwrap_or(&[]);
    match ids.iter().find(|&&id| id < 0 || id as usize >= vocab) {
        None => Ok(()),
        Some(&id) => Err(DivergenceError::InvalidParameter {
            name: "token id",
            value: id as f64,
            expected: "an id in 0..V of the student's vocabulary",
        }),
    }
}

/// The flat positions `b · T + t` that `mask` selects; an error when it selects none.
pub(crate) fn mask_rows<B: Backend>(mask: &Tensor<B, 2, Bool>) -> Result<Rows> {
    let data = mask.clone().int().into_data().convert::<i64>();
    let flags = data.as_slice::<i64>().unwrap_or(&[]);
    let rows: Vec<usize> = (0..flags.len()).filter(|&i| flags[i] != 0).collect();
    match rows.len() {
        0 => Err(DivergenceError::EmptyMask),
        n if n == flags.len() => Ok(Rows::All),
        _ => Ok(Rows::Selected(Arc::from(rows))),
    }
}

pub(crate) fn positive(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(DivergenceError::InvalidParameter {
            name,
            value,
            expected: "a finite number > 0",
        })
    }
}
