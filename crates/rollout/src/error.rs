//! Typed errors of rollout parameters and inputs.

/// Why a rollout could not run.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A sampling parameter is out of range.
    #[error("sampling parameter `{field}` = {value}: {expected}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// Its value, printed.
        value: String,
        /// The valid range.
        expected: &'static str,
    },
    /// A prompt has no tokens.
    #[error("prompt {index} is empty")]
    EmptyPrompt {
        /// Index of the prompt.
        index: usize,
    },
    /// A prompt does not fit the model's context.
    #[error("prompt {index} has {len} tokens; the model's context is {context}")]
    PromptTooLong {
        /// Index of the prompt.
        index: usize,
        /// Its length.
        len: usize,
        /// The model's context length.
        context: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} in row {index} is outside the vocabulary of {vocab}")]
    TokenOutOfVocabulary {
        /// Index of the row.
        index: usize,
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The model produced NaN or infinite logits (a broken checkpoint or an overflow).
    #[error(
        "the model's logits are not finite at token {step} of sample {sample} of prompt {prompt}"
    )]
    NonFiniteLogits {
        /// Index of the prompt.
        prompt: usize,
        /// Index of the sample among the prompt's `n`.
        sample: usize,
        /// Tokens generated before it.
        step: usize,
    },
    /// A sampled token is one the tokenizer does not have (its vocabulary is smaller than the
    /// model's output): its text would be dropped without a word.
    #[error(
        "sample {sample} of prompt {prompt} drew token id {token} at token {step}, which the \
         tokenizer (of {tokens} tokens) does not have"
    )]
    UnknownToken {
        /// Index of the prompt.
        prompt: usize,
        /// Index of the sample among the prompt's `n`.
        sample: usize,
        /// Tokens generated before it.
        step: usize,
        /// The token id.
        token: u32,
        /// The tokenizer's vocabulary size.
        tokens: usize,
    },
    /// The tokenizer or the sequence layout failed.
    #[error(transparent)]
    Policy(#[from] opd_policy::PolicyError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, RolloutError>;
