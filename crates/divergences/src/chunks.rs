//! Iteration over the evaluated positions in chunks of bounded size.

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend, s};

use crate::buckets::{TeacherChunk, TeacherLogits, float};

/// Which rows of an `[N, V]` logit matrix are evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    /// Every row, in order.
    All,
    /// The listed rows, in this order (e.g. the positions a mask selects).
    Selected(Arc<[usize]>),
}

impl Rows {
    /// The evaluated rows of `matrix` `[N, X]`, in order.
    pub(crate) fn of<B: Backend, K: burn::tensor::BasicOps<B>>(
        &self,
        matrix: Tensor<B, 2, K>,
    ) -> Tensor<B, 2, K> {
        match self {
            Self::All => matrix,
            Self::Selected(rows) => {
                let device = matrix.device();
                let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                let idx = Tensor::from_data(TensorData::new(idx, [rows.len()]), &device);
                matrix.select(0, idx)
            }
        }
    }

    /// Number of evaluated rows out of `total`.
    pub fn count(&self, total: usize) -> usize {
        match self {
            Self::All => total,
            Self::Selected(rows) => rows.len(),
        }
    }
}

/// One chunk: the output positions `out_start..out_start + len` and the input rows they read.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub out_start: usize,
    pub len: usize,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Range(usize),
    Indices(Vec<usize>),
}

/// The chunks covering `rows` of a matrix with `total` rows, `size` rows at a time.
pub(crate) fn chunks(rows: &Rows, total: usize, size: usize) -> Vec<Chunk> {
    let count = rows.count(total);
    (0..count)
        .step_by(size.max(1))
        .map(|out_start| {
            let len = size.min(count - out_start);
            let source = match rows {
                Rows::All => Source::Range(out_start),
                Rows::Selected(rows) => Source::Indices(rows[out_start..out_start + len].to_vec()),
            };
            Chunk {
                out_start,
                len,
                source,
            }
        })
        .collect()
}

impl Chunk {
    /// Whether this chunk reads every row of an `[total, V]` matrix, in order.
    pub(crate) fn is_whole(&self, total: usize) -> bool {
        matches!(self.source, Source::Range(0)) && self.len == total
    }

    /// The indices of the chunk's rows, in order.
    pub(crate) fn rows(&self) -> Vec<usize> {
        match &self.source {
            Source::Range(start) => (*start..*start + self.len).collect(),
            Source::Indices(idx) => idx.clone(),
        }
    }

    /// The chunk's rows (along the first axis) of `t`.
    pub(crate) fn take<B: Backend, const D: usize, K>(&self, t: Tensor<B, D, K>) -> Tensor<B, D, K>
    where
        K: burn::tensor::BasicOps<B>,
    {
        match &self.source {
            Source::Range(start) => t.slice(s![*start..*start + self.len]),
            Source::Indices(idx) => {
                let device = t.device();
                t.select(0, indices(idx, &device))
            }
        }
    }

    /// Writes `values` (this chunk's rows) into `target`, an `[total, V]` matrix of zeros.
    pub(crate) fn put<B: Backend>(
        &self,
        target: Tensor<B, 2>,
        values: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        match &self.source {
            Source::Range(start) => target.slice_assign(s![*start..*start + self.len], values),
            Source::Indices(idx) => {
                let device = target.device();
                target.select_assign(
                    0,
                    indices(idx, &device),
                    values,
                    burn::tensor::IndexingUpdateOp::Add,
                )
            }
        }
    }

    /// The teacher's rows for this chunk (a teacher given by its hidden states is projected).
    pub(crate) fn teacher<B: Backend>(&self, teacher: &TeacherLogits<B>) -> TeacherChunk<B> {
        match teacher {
            TeacherLogits::Logits(t) => TeacherChunk::Logits(self.take(float(t.clone()))),
            TeacherLogits::TopK { ids, log_probs } => TeacherChunk::TopK {
                ids: self.take(Tensor::<B, 2, Int>::from_primitive(ids.clone())),
                log_probs: self.take(float(log_probs.clone())),
            },
            TeacherLogits::Hidden { hidden, head } => TeacherChunk::Logits(
                self.take(float::<B, 2>(hidden.clone()))
                    .matmul(float::<B, 2>(head.clone()).transpose()),
            ),
        }
    }
}

fn indices<B: Backend>(idx: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [idx.len()]), device)
}
