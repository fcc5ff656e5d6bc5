//! Typed errors for every divergence entry point.

/// What went wrong when computing a divergence or loss.
///
/// Every public function validates its inputs and returns one of these instead of panicking
/// or producing a silent NaN.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DivergenceError {
    /// Student and teacher tensors (or a mask, ids, log-probs) disagree in shape.
    #[error("shape mismatch for `{what}`: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// Which argument disagreed.
        what: &'static str,
        /// The shape implied by the student logits.
        expected: Vec<usize>,
        /// The shape that was passed.
        actual: Vec<usize>,
    },
    /// The mask selects no position, so a mean over positions is undefined.
    #[error("the mask selects no position: nothing to average")]
    EmptyMask,
    /// A tensor with no rows or an empty vocabulary.
    #[error("`{what}` is empty (shape {shape:?})")]
    Empty {
        /// Which argument was empty.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A hyper-parameter outside its valid range.
    #[error("invalid `{name}` = {value}: {expected}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// The value passed.
        value: f64,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// The result contains NaN or infinity (NaN or infinite logits went in).
    #[error(
        "non-finite {what} at {count} of {total} positions (first at position {first}); \
         check the logits for NaN or infinity"
    )]
    NonFinite {
        /// Which quantity was non-finite.
        what: &'static str,
        /// Number of non-finite positions.
        count: usize,
        /// Number of positions checked.
        total: usize,
        /// Flat index of the first non-finite position.
        first: usize,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DivergenceError>;
