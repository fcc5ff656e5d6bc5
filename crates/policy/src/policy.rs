//! The [`Policy`] trait: what every layer above (rollout, teachers, trainers) asks of a model.
//!
//! ## The training forward and the no-grad forward
//!
//! [`Policy::response_logits`] (or [`Policy::response_hidden`] for a loss that fuses the
//! output head) gives the outputs at the response positions of a [`SequenceBatch`], `[B, R, ·]`.
//! Which backend it runs on decides what it costs:
//!
//! - **Student (trained)**: call it on the model of an `Autodiff<_>` backend. The graph is
//!   recorded and `loss.backward()` reaches every parameter that requires grad (only the
//!   adapters with LoRA). The CPU fast paths (row kernel, attention kernel, in-place cache)
//!   step aside under autodiff: burn's portable ops run.
//! - **Teachers, π_old, rollouts**: call it on `model.valid()`, the same weights on the inner
//!   backend (`burn::module::AutodiffModule::valid`, which shares the parameters' storage and
//!   records nothing). The output is a constant, and the fast CPU kernels run. Never use the
//!   autodiff model where no gradient is wanted: it keeps every activation alive until the
//!   graph is dropped.

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, backend::Backend, s};

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::Llama;
use crate::sequence::SequenceBatch;

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

    /// The output head as a `[V, d]` matrix `W` when the projection is `h·Wᵀ` (no bias), for
    /// losses that form the logits a block of rows at a time instead of `project`ing all.
    fn output_head(&self) -> Option<Tensor<B, 2>> {
        None
    }

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

    /// Final hidden states `[B, R, d]` at the slots that score the response tokens:
    /// `hidden(ids, padding)[:, C−1 .. C−1+R]` of the batch's layout. Position `t` predicts
    /// response token `t`; positions past a row's response are padding (see
    /// [`SequenceBatch::response_mask`]).
    ///
    /// Errors when an id is outside the vocabulary or the rows do not fit the context.
    fn response_hidden(&self, batch: &SequenceBatch) -> Result<Tensor<B, 3>> {
        batch.check(self.vocab_size(), self.max_context())?;
        let device = self.devices().into_iter().next().unwrap_or_default();
        let hidden = self.hidden(batch.ids(&device), &batch.padding());
        Ok(hidden.slice(s![.., batch.scoring_slots(), ..]))
    }

    /// Next-token logits `[B, R, V]` at the response positions:
    /// `project(response_hidden(batch))`, so the output head runs on `B·R` rows only.
    /// `logits[b, t]` is the distribution of response token `t` of row `b` given its context
    /// and the response tokens before it.
    fn response_logits(&self, batch: &SequenceBatch) -> Result<Tensor<B, 3>> {
        Ok(self.project(self.response_hidden(batch)?))
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

    fn output_head(&self) -> Option<Tensor<B, 2>> {
        Llama::output_head(self)
    }

    fn new_cache(&self, padding: Vec<usize>) -> KvCache<B> {
        Llama::new_cache(self, padding)
    }

    fn hidden_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.forward_hidden_cached(ids, cache)
    }
}

/// LoRA adapters that can be switched off: under LoRA the frozen initial policy is the model
/// with its adapters off (shared storage, no copy).
pub trait Adapters: Sized {
    /// Whether LoRA adapters are attached.
    fn has_adapters(&self) -> bool;

    /// The same model (shared storage) with its adapters switched on or off; without adapters,
    /// the model itself.
    fn with_adapters_enabled(&self, enabled: bool) -> Self;
}

/// A model opd trains: a [`Policy`] on an autodiff backend with LoRA [`Adapters`], whose copy
/// without a graph (`AutodiffModule::valid`, what sampling and the teachers run) is a policy
/// of the inner backend with adapters too. The trainers, methods and teachers reach the student
/// through this trait only; [`Llama`] is one (every family its configuration covers), and a model
/// of another kind that implements it trains with every method unchanged.
pub trait Trainable<B: AutodiffBackend>:
    Policy<B> + Adapters + AutodiffModule<B, InnerModule = Self::Inner> + Clone + 'static
{
    /// The model on the inner backend: `valid()`'s type.
    type Inner: Policy<B::InnerBackend> + Adapters + Clone + Send + core::fmt::Debug + 'static;
}

impl<B: Backend> Adapters for Llama<B> {
    fn has_adapters(&self) -> bool {
        Llama::has_adapters(self)
    }

    fn with_adapters_enabled(&self, enabled: bool) -> Self {
        Llama::with_adapters_enabled(self, enabled)
    }
}

impl<B: AutodiffBackend> Trainable<B> for Llama<B> {
    type Inner = Llama<B::InnerBackend>;
}
