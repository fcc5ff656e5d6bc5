//! Typed errors naming the file and the tensor or field at fault.

use std::path::PathBuf;

/// What went wrong while reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is truncated or malformed.
    #[error("{}: corrupt file: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset.
        detail: String,
    },
    /// The file is well formed but uses something opd does not support.
    #[error("{}: unsupported: {detail}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        detail: String,
    },
    /// A required metadata key or config field is missing or has the wrong type.
    #[error("{}: missing or invalid field `{field}`", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The key.
        field: String,
    },
    /// A required tensor is missing.
    #[error("{}: missing tensor `{name}`", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// Text could not be tokenized or decoded.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// Two models whose parameters do not line up (count or shapes), e.g. an EMA teacher of
    /// another architecture than its student.
    #[error("parameters do not match: {0}")]
    ParameterMismatch(String),
    /// An argument outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PolicyError>;
