//! The key/value cache of incremental decoding, and the layout of a left-padded batch.
//!
//! Row `b` of a batch occupies sequence slots `0..len`; its first `padding[b]` slots are left
//! padding. The token in slot `s` has position `s − padding[b]` (RoPE starts at 0 on every
//! row), and attends to slots `k ≤ s` with `k ≥ padding[b]` (padding slots attend to
//! themselves only, so that no attention row is empty).

use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend, s};

/// Where a block of `T` new tokens sits in a left-padded batch (internal to the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotLayout {
    /// Left padding of each row, in slots.
    pub padding: Vec<usize>,
    /// Slot of the first new token (the number of slots already cached).
    pub start: usize,
}

impl SlotLayout {
    /// RoPE positions `max(s − padding[b], 0)` of the slots `start..start+len`, per row.
    pub(crate) fn positions(&self, len: usize) -> Vec<Vec<usize>> {
        self.padding
            .iter()
            .map(|&pad| {
                (self.start..self.start + len)
                    .map(|s| s.saturating_sub(pad))
                    .collect()
            })
            .collect()
    }

    /// The attention-internal mask `[B or 1, 1, G·T, start+T]`, `true` = hidden (burn's
    /// attention convention, the opposite of opd's masks, which is why it stays private), for `G` query heads
    /// per key/value head stacked along the query axis (row `g·T + t` is query slot
    /// `start + t`). Key slot `k` is hidden from query slot `q` when `k > q` (causal) or when
    /// `k < padding[b]` and `k ≠ q` (padding). `None` when nothing is masked: one new token
    /// per row and no padding.
    pub(crate) fn mask<B: Backend>(
        &self,
        len: usize,
        group: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 4, Bool>> {
        let padded = self.padding.iter().any(|&p| p > 0);
        if len == 1 && !padded {
            return None;
        }
        let keys = self.start + len;
        let rows: &[usize] = if padded { &self.padding } else { &[0] };
        let mask: Vec<bool> = rows
            .iter()
            .flat_map(|&pad| {
                (0..group).flat_map(move |_| {
                    (self.start..self.start + len)
                        .flat_map(move |q| (0..keys).map(move |k| k > q || (k < pad && k != q)))
                })
            })
            .collect();
        Some(Tensor::from_data(
            TensorData::new(mask, [rows.len(), 1, group * len, keys]),
            device,
        ))
    }
}

/// Keys and values of one layer, `[B, KV, capacity, hd]` each; slots past the cache's length
/// are unused.
#[derive(Debug, Clone)]
pub(crate) struct LayerCache<B: Backend> {
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
}

/// Cached keys and values of every layer, with the batch's padding.
///
/// Each layer's buffers have room for more slots than are filled, and new keys are written in
/// place (`slice_assign`, which the CPU backend does without a copy when the buffer is not
/// shared). When full, a buffer grows to twice its size, so appending `T` slots costs `O(T)`
/// amortized rather than a copy of the whole cache. [`KvCache::reserve`] sizes the buffers up
/// front when the final length is known.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerCache<B>>>,
    padding: Vec<usize>,
    len: usize,
    reserved: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` decoder blocks and rows with the given left padding.
    pub fn new(layers: usize, padding: Vec<usize>) -> Self {
        Self {
            layers: vec![None; layers],
            padding,
            len: 0,
            reserved: 0,
        }
    }

    /// Sizes the buffers for `slots` slots (padding included), so that decoding up to that
    /// length never reallocates.
    pub fn reserve(&mut self, slots: usize) {
        self.reserved = self.reserved.max(slots);
    }

    /// Number of slots cached (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of rows.
    pub fn batch_size(&self) -> usize {
        self.padding.len()
    }

    /// Left padding of each row.
    pub fn padding(&self) -> &[usize] {
        &self.padding
    }

    /// The layout of the next `T` tokens, which will fill slots `len..len+T`.
    pub(crate) fn layout(&self) -> SlotLayout {
        SlotLayout {
            padding: self.padding.clone(),
            start: self.len,
        }
    }

    /// Writes layer `layer`'s keys and values `[B, KV, T, hd]` of the next `T` slots and
    /// returns views of all its filled slots, `[B, KV, len + T, hd]` each. Call once per
    /// layer, then [`Self::advance`] by `T` (a model of any family keeps its state here).
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> [Tensor<B, 4>; 2] {
        let [batch, kv_heads, new, head_dim] = keys.dims();
        let (start, end) = (self.len, self.len + new);
        let wanted = end.max(self.reserved);
        let slot = &mut self.layers[layer];
        let grown = |old: Option<Tensor<B, 4>>, capacity: usize| {
            let fresh = Tensor::zeros([batch, kv_heads, capacity, head_dim], &keys.device());
            match old {
                Some(old) if start > 0 => write(fresh, 0, old.slice(s![.., .., 0..start, ..])),
                _ => fresh,
            }
        };
        let cache = match slot.take() {
            Some(cache) if cache.keys.dims()[2] >= end => cache,
            Some(cache) => {
                let capacity = wanted.max(2 * cache.keys.dims()[2]);
                LayerCache {
                    keys: grown(Some(cache.keys), capacity),
                    values: grown(Some(cache.values), capacity),
                }
            }
            None => LayerCache {
                keys: grown(None, wanted),
                values: grown(None, wanted),
            },
        };
        let cache = LayerCache {
            keys: write(cache.keys, start, keys),
            values: write(cache.values, start, values),
        };
        let filled = [
            cache.keys.clone().slice(s![.., .., 0..end, ..]),
            cache.values.clone().slice(s![.., .., 0..end, ..]),
        ];
        *slot = Some(cache);
        filled
    }

    /// Counts `tokens` more slots as filled, after every layer's [`Self::append`].
    pub fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }

    /// Keeps only the given rows, in that order (finished rows stop costing compute).
    pub fn retain_rows(&mut self, rows: &[usize]) {
        let device = self.layers.iter().flatten().next().map(|c| c.keys.device());
        if let Some(device) = device {
            let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let index =
                Tensor::<B, 1, Int>::from_data(TensorData::new(index, [rows.len()]), &device);
            for cache in self.layers.iter_mut().flatten() {
                cache.keys = cache.keys.clone().select(0, index.clone());
                cache.values = cache.values.clone().select(0, index.clone());
            }
        }
        self.padding = rows.iter().map(|&r| self.padding[r]).collect();
    }
}

/// `buffer[:, :, start..start+T, :] = new` for `new` `[B, KV, T, hd]`. On the CPU backend a
/// buffer nothing else shares is written in place (burn's `slice_assign` copies it first).
fn write<B: Backend>(buffer: Tensor<B, 4>, start: usize, new: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let buffer = match write_in_place(buffer, start, &new) {
        Ok(written) => return written,
        Err(buffer) => buffer,
    };
    let end = start + new.dims()[2];
    buffer.slice_assign(s![.., .., start..end, ..], new)
}

/// [`write`] without a copy of `buffer`, or `buffer` back when it is shared, strided, not
/// f32, or not a CPU tensor.
#[cfg(feature = "flex")]
fn write_in_place<B: Backend>(
    buffer: Tensor<B, 4>,
    start: usize,
    new: &Tensor<B, 4>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    use crate::flex_tensor::{from_flex, into_flex, to_flex};

    let [batch, heads, capacity, head_dim] = buffer.dims();
    let len = new.dims()[2];
    let mut flex = into_flex(buffer)?;
    let back = |flex| from_flex::<B, 4>(flex).expect("B is Flex: `into_flex` succeeded");
    let fits = flex.dtype() == burn::tensor::DType::F32
        && flex.layout().is_contiguous()
        && flex.layout().start_offset() == 0
        && start + len <= capacity;
    let source = to_flex(new.clone()).map(|source| source.to_contiguous());
    let source = source.as_ref().and_then(|source| source.as_slice::<f32>());
    let (Some(source), true) = (source, fits) else {
        return Err(back(flex));
    };
    let Some(storage) = flex.try_storage_mut::<f32>() else {
        return Err(back(flex));
    };
    let block = len * head_dim;
    for (bh, chunk) in source.chunks_exact(block).enumerate().take(batch * heads) {
        let at = (bh * capacity + start) * head_dim;
        storage[at..at + block].copy_from_slice(chunk);
    }
    Ok(back(flex))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Tensor, TensorData};

    use super::{KvCache, SlotLayout};

    fn filled(cache: &mut KvCache<Flex>, values: &[f32]) -> Vec<f32> {
        let device = Default::default();
        let new = |v: &[f32]| {
            Tensor::<Flex, 4>::from_data(TensorData::new(v.to_vec(), [1, 1, v.len(), 1]), &device)
        };
        let [keys, _] = cache.append(0, new(values), new(values));
        cache.advance(values.len());
        keys.into_data().to_vec().unwrap()
    }

    /// Appends past the capacity grow the buffer and keep every slot; a clone keeps its own
    /// slots when the original is written after it (the in-place write must not leak).
    #[test]
    fn appends_grow_and_clones_stay_apart() {
        let mut cache = KvCache::<Flex>::new(1, vec![0]);
        assert_eq!(filled(&mut cache, &[1.0, 2.0]), [1.0, 2.0]);
        assert_eq!(filled(&mut cache, &[3.0]), [1.0, 2.0, 3.0]);
        let mut copy = cache.clone();
        assert_eq!(filled(&mut cache, &[4.0, 5.0]), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(filled(&mut copy, &[9.0]), [1.0, 2.0, 3.0, 9.0]);
        assert_eq!(filled(&mut cache, &[6.0]), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut reserved = KvCache::<Flex>::new(1, vec![0]);
        reserved.reserve(8);
        assert_eq!(filled(&mut reserved, &[7.0]), [7.0]);
        assert_eq!(filled(&mut reserved, &[8.0]), [7.0, 8.0]);
    }

    #[test]
    fn positions_start_at_zero_after_the_padding() {
        let layout = SlotLayout {
            padding: vec![0, 2],
            start: 1,
        };
        assert_eq!(layout.positions(3), vec![vec![1, 2, 3], vec![0, 0, 1]]);
    }
}
