//! The one batch layout of the training path: (context, response) pairs of token ids.
//!
//! Every row is a context (a prompt, or a prompt with privileged tokens inserted: a reference
//! solution, a demonstration, feedback) followed by a response. Contexts are left-padded to
//! the longest context `C`, responses right-padded to the longest response `R`:
//!
//! ```text
//! slot        0 ............ C−1 | C ........... C+R−1
//! row 0       pad pad c c c c  c | r r r r r pad pad
//! row 1       c   c   c c c c  c | r r r r r r   r
//! ```
//!
//! Response token `t` of every row sits in slot `C + t`, so the next-token logits that score
//! it come from slot `C − 1 + t`: the response positions of a batch are the one contiguous
//! range [`SequenceBatch::scoring_slots`], and every output of the training path (student
//! logits, teacher logits, log-probs, masks) is laid out `[B, R, ·]` with response token `t`
//! at index `t`. The same responses in a teacher's longer contexts
//! ([`SequenceBatch::with_contexts`]) line up with the student's by construction: only `C`
//! changes. Responses are never re-tokenized.
//!
//! **Masks.** One convention across opd: a `Bool` tensor, `true` where the position counts
//! ([`SequenceBatch::response_mask`]). Right-padding slots come after a row's last real token,
//! so causal attention keeps them out of every real position; left-padding slots are hidden
//! by the model's attention.

use std::ops::Range;

use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

use crate::error::{Result, SequenceError};

/// Token ids of `B` (context, response) rows in the layout above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceBatch {
    contexts: Vec<Vec<u32>>,
    responses: Vec<Vec<u32>>,
    context_width: usize,
    response_width: usize,
}

impl SequenceBatch {
    /// A batch of `contexts[b]` followed by `responses[b]`.
    ///
    /// Errors when the counts differ, the batch is empty, a context is empty (nothing would
    /// score the first response token), or no row has a response token.
    pub fn new(contexts: Vec<Vec<u32>>, responses: Vec<Vec<u32>>) -> Result<Self> {
        if contexts.len() != responses.len() {
            return Err(SequenceError::CountMismatch {
                contexts: contexts.len(),
                responses: responses.len(),
            }
            .into());
        }
        if contexts.is_empty() {
            return Err(SequenceError::EmptyBatch.into());
        }
        if let Some(row) = contexts.iter().position(Vec::is_empty) {
            return Err(SequenceError::EmptyContext { row }.into());
        }
        let response_width = responses.iter().map(Vec::len).max().unwrap_or(0);
        if response_width == 0 {
            return Err(SequenceError::NoResponseTokens.into());
        }
        Ok(Self {
            context_width: contexts.iter().map(Vec::len).max().unwrap_or(0),
            contexts,
            responses,
            response_width,
        })
    }

    /// The same responses after other contexts: a teacher's view of the student's samples
    /// (say, the prompt with a reference solution inserted). Outputs of both batches are
    /// aligned at every response token.
    pub fn with_contexts(&self, contexts: Vec<Vec<u32>>) -> Result<Self> {
        Self::new(contexts, self.responses.clone())
    }

    /// Rows `range` as a batch of their own (a micro-batch; its widths are its own). Panics
    /// when `range` is out of bounds; errors when its rows have no response token.
    pub fn rows(&self, range: Range<usize>) -> Result<Self> {
        Self::new(
            self.contexts[range.clone()].to_vec(),
            self.responses[range].to_vec(),
        )
    }

    /// Number of rows `B`.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Whether the batch has no rows (never true for a constructed batch).
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// The context of each row.
    pub fn contexts(&self) -> &[Vec<u32>] {
        &self.contexts
    }

    /// The response of each row.
    pub fn responses(&self) -> &[Vec<u32>] {
        &self.responses
    }

    /// The longest context `C`.
    pub fn context_width(&self) -> usize {
        self.context_width
    }

    /// The longest response `R`: the second axis of every response-aligned output.
    pub fn response_width(&self) -> usize {
        self.response_width
    }

    /// Slots per row, `C + R`.
    pub fn width(&self) -> usize {
        self.context_width + self.response_width
    }

    /// Left padding of each row, `C − |context_b|`.
    pub fn padding(&self) -> Vec<usize> {
        let c = self.context_width;
        self.contexts.iter().map(|ctx| c - ctx.len()).collect()
    }

    /// The slot of response token `t` (the same in every row): `C + t`.
    pub fn token_slot(&self, t: usize) -> usize {
        self.context_width + t
    }

    /// The slots whose next-token logits score response tokens `0..R`: `C − 1 .. C − 1 + R`.
    pub fn scoring_slots(&self) -> Range<usize> {
        let start = self.context_width - 1;
        start..start + self.response_width
    }

    /// Response tokens counted, `Σ_b |response_b|`.
    pub fn response_tokens(&self) -> usize {
        self.responses.iter().map(Vec::len).sum()
    }

    /// Checks the batch against a model: every id in `0..vocab`, every row within `context`
    /// slots (`C + R ≤ context`, padding included, since positions continue into it).
    pub fn check(&self, vocab: usize, context: usize) -> Result<()> {
        if self.width() > context {
            return Err(SequenceError::TooLong {
                longest_context: self.context_width,
                longest_response: self.response_width,
                context,
            }
            .into());
        }
        for (row, (ctx, resp)) in self.contexts.iter().zip(&self.responses).enumerate() {
            if let Some(&id) = ctx.iter().chain(resp).find(|&&id| id as usize >= vocab) {
                return Err(SequenceError::TokenOutOfVocabulary { row, id, vocab }.into());
            }
        }
        Ok(())
    }

    /// Padded token ids `[B, C + R]` (padding holds id 0; the model never reads it into a
    /// real position).
    pub fn ids<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let (c, r) = (self.context_width, self.response_width);
        let ids: Vec<i64> = self
            .contexts
            .iter()
            .zip(&self.responses)
            .flat_map(|(ctx, resp)| {
                let left = std::iter::repeat_n(0, c - ctx.len());
                let right = std::iter::repeat_n(0, r - resp.len());
                left.chain(ctx.iter().chain(resp).map(|&id| id as i64))
                    .chain(right)
            })
            .collect();
        Tensor::from_data(TensorData::new(ids, [self.len(), c + r]), device)
    }

    /// Response token ids `[B, R]`, 0 past each row's end.
    pub fn response_ids<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let r = self.response_width;
        let ids: Vec<i64> = self
            .responses
            .iter()
            .flat_map(|resp| {
                resp.iter()
                    .map(|&id| id as i64)
                    .chain(std::iter::repeat_n(0, r - resp.len()))
            })
            .collect();
        Tensor::from_data(TensorData::new(ids, [self.len(), r]), device)
    }

    /// The response mask `[B, R]`: `true` at `(b, t)` when `t < |response_b|`.
    pub fn response_mask<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Bool> {
        Tensor::from_data(
            TensorData::new(self.response_mask_host(), [self.len(), self.response_width]),
            device,
        )
    }

    /// [`Self::response_mask`] on the host, row-major.
    pub fn response_mask_host(&self) -> Vec<bool> {
        let r = self.response_width;
        self.responses
            .iter()
            .flat_map(|resp| (0..r).map(move |t| t < resp.len()))
            .collect()
    }
}
