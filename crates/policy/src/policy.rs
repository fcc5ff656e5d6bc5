//! The [`Policy`] trait: what every layer above (rollout, teachers, trainers) asks of a model.

use burn::module::Module;
use burn::tensor::{Int, Tensor, backend::Backend};

use crate::kv_cache::KvCache;
use crate::model::Llama;

/// A causal language model over a left-padded batch.
///
/// Row `b` of `ids` `[B, T]` starts with `padding[b]` padding tokens; they are neither attended
/// to nor counted in positions. Logits at slot `t` score the token at `t + 1`. Special token
/// ids (EOS, padding) belong to the tokenizer: see [`crate::ChatTokenizer`].
pub trait Policy<B: Backend>: Module<B> {
    /// Vocabulary size `V`, the last dimension of the logits.
    fn vocab_size(&self) -> usize;

    /// The longest sequence (prompt + answer) the model supports, in tokens.
    fn max_context(&self) -> usize;

    /// Final hidden states `[B, T, d]` (after the last norm), before the output projection.
    fn hidden(&self, ids: Tensor<B, 2, Int>, padding: &[usize]) -> Tensor<B, 3>;

    /// The output projection `[B, T, d] → [B, T, V]`.
    fn project(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3>;

    /// An empty KV cache for rows with the given left padding.
    fn new_cache(&self, padding: Vec<usize>) -> KvCache<B>;

    /// Hidden states of `T` new tokens per row after what `cache` holds; their keys and
    /// values are appended to the cache.
    fn hidden_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3>;

    /// Next-token logits `[B, T, V]`: `project(hidden(ids, padding))`.
    fn logits(&self, ids: Tensor<B, 2, Int>, padding: &[usize]) -> Tensor<B, 3> {
        self.project(self.hidden(ids, padding))
    }

    /// Next-token logits of new tokens, decoding incrementally through `cache`.
    fn logits_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let hidden = self.hidden_cached(ids, cache);
        self.project(hidden)
    }
}

impl<B: Backend> Policy<B> for Llama<B> {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_context(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn hidden(&self, ids: Tensor<B, 2, Int>, padding: &[usize]) -> Tensor<B, 3> {
        self.forward_hidden(ids, padding)
    }

    fn project(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        Llama::project(self, hidden)
    }

    fn new_cache(&self, padding: Vec<usize>) -> KvCache<B> {
        Llama::new_cache(self, padding)
    }

    fn hidden_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.forward_hidden_cached(ids, cache)
    }
}
