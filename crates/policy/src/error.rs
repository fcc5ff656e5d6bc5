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
    /// A batch of (context, response) rows that cannot be built or does not fit the model.
    #[error(transparent)]
    Sequence(#[from] SequenceError),
}

/// Why a [`crate::SequenceBatch`] cannot be built or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// Contexts and responses differ in number.
    #[error(
        "{contexts} contexts but {responses} responses: a batch needs one response per context"
    )]
    CountMismatch {
        /// Contexts given.
        contexts: usize,
        /// Responses given.
        responses: usize,
    },
    /// No rows.
    #[error("a sequence batch needs at least one row")]
    EmptyBatch,
    /// A row without context tokens: nothing scores its first response token.
    #[error("row {row} has an empty context: nothing would score its first response token")]
    EmptyContext {
        /// The row.
        row: usize,
    },
    /// Every response is empty.
    #[error("no row has a response token")]
    NoResponseTokens,
    /// The padded rows do not fit the model's context.
    #[error("the batch needs {} slots per row (longest context {longest_context} + longest response {longest_response}); the model's context is {context}", longest_context + longest_response)]
    TooLong {
        /// `C`.
        longest_context: usize,
        /// `R`.
        longest_response: usize,
        /// The model's context length.
        context: usize,
    },
    /// A token id outside the model's vocabulary.
    #[error("token id {id} in row {row} is outside the vocabulary of {vocab}")]
    TokenOutOfVocabulary {
        /// The row.
        row: usize,
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PolicyError>;
