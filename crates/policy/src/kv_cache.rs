//! The key/value cache of incremental decoding, and the layout of a left-padded batch.
//!
//! Row `b` of a batch occupies sequence slots `0..len`; its first `padding[b]` slots are left
//! padding. The token in slot `s` has position `s − padding[b]` (RoPE starts at 0 on every
//! row), and attends to slots `k ≤ s` with `k ≥ padding[b]` (padding slots attend to
//! themselves only, so that no attention row is empty).

use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

/// Where a block of `T` new tokens sits in a left-padded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLayout {
    /// Left padding of each row, in slots.
    pub padding: Vec<usize>,
    /// Slot of the first new token (the number of slots already cached).
    pub start: usize,
}

impl SlotLayout {
    /// RoPE positions `max(s − padding[b], 0)` of the slots `start..start+len`, per row.
    pub fn positions(&self, len: usize) -> Vec<Vec<usize>> {
        self.padding
            .iter()
            .map(|&pad| {
                (self.start..self.start + len)
                    .map(|s| s.saturating_sub(pad))
                    .collect()
            })
            .collect()
    }

    /// The attention mask `[B or 1, 1, G·T, start+T]`, `true` = masked, for `G` query heads
    /// per key/value head stacked along the query axis (row `g·T + t` is query slot
    /// `start + t`). Key slot `k` is hidden from query slot `q` when `k > q` (causal) or when
    /// `k < padding[b]` and `k ≠ q` (padding). `None` when nothing is masked: one new token
    /// per row and no padding.
    pub fn mask<B: Backend>(
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

/// Cached keys and values `[B, KV, slots, hd]` of every layer, with the batch's padding.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<Option<[Tensor<B, 4>; 2]>>,
    padding: Vec<usize>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` decoder blocks and rows with the given left padding.
    pub fn new(layers: usize, padding: Vec<usize>) -> Self {
        Self {
            layers: vec![None; layers],
            padding,
            len: 0,
        }
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

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }

    /// Keeps only the given rows, in that order (finished rows stop costing compute).
    pub fn retain_rows(&mut self, rows: &[usize]) {
        let Some(device) = self.layers.iter().flatten().next().map(|[k, _]| k.device()) else {
            self.padding = rows.iter().map(|&r| self.padding[r]).collect();
            return;
        };
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [rows.len()]), &device);
        for [k, v] in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, index.clone());
            *v = v.clone().select(0, index.clone());
        }
        self.padding = rows.iter().map(|&r| self.padding[r]).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::SlotLayout;

    #[test]
    fn positions_start_at_zero_after_the_padding() {
        let layout = SlotLayout {
            padding: vec![0, 2],
            start: 1,
        };
        assert_eq!(layout.positions(3), vec![vec![1, 2, 3], vec![0, 0, 1]]);
    }
}
