//! Divergences at positions: student and teacher logits `[N, V]`, one value per position.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::backend::DivergenceBackend;
use crate::buckets::{TeacherLogits, float, primitive};
use crate::check;
use crate::chunks::Rows;
use crate::error::{DivergenceError, Result};
use crate::kind::DivergenceOptions;

/// The teacher side of a divergence, as tensors of rank `D` (2 for positions `[N, ·]`,
/// 3 for sequences `[B, T, ·]`). Gradients never flow into it.
#[derive(Debug, Clone)]
pub enum TeacherTarget<B: Backend, const D: usize> {
    /// Full teacher logits, the student's shape.
    Logits(Tensor<B, D>),
    /// A precomputed top-k, as returned by served teachers: token ids and their log-probs,
    /// both of the student's shape with the vocabulary axis replaced by `k`. The support is
    /// these `k` tokens plus a tail bucket with mass `1 − Σ exp(log_probs)` (floored at 1e-12).
    TopK {
        /// Token ids, distinct within a position.
        ids: Tensor<B, D, Int>,
        /// The teacher's log-probabilities at `ids`, used as given (no temperature).
        log_probs: Tensor<B, D>,
    },
    /// The teacher's final hidden states, the student's shape with the vocabulary axis
    /// replaced by the teacher's width `d_T`, and its output head `[V, d_T]`: logits
    /// `z_T = hidden · headᵀ`, formed a chunk of positions at a time by the losses that take
    /// the student's hidden states too ([`crate::DistillationLoss::forward_from_hidden`]), and
    /// once whole by those that take the student's logits.
    Hidden {
        /// Final hidden states.
        hidden: Tensor<B, D>,
        /// The output head `[V, d_T]`.
        head: Tensor<B, 2>,
    },
}

/// Logits from final hidden states and an output head, `z = h · Wᵀ` over the last dimension
/// (`hidden` `[.., d]`, `head` `[V, d]`, logits `[.., V]`), as one 2-D product of all leading
/// positions (a batched product would pack the head once per leading index). Keeps the graph.
pub fn head_logits<B: Backend, const D: usize>(
    hidden: Tensor<B, D>,
    head: Tensor<B, 2>,
) -> Tensor<B, D> {
    let mut dims = hidden.dims();
    let (width, vocab) = (dims[D - 1], head.dims()[0]);
    let logits = hidden.reshape([-1, width as i32]).matmul(head.transpose());
    dims[D - 1] = vocab;
    logits.reshape(dims)
}

impl<B: Backend, const D: usize> TeacherTarget<B, D> {
    /// The teacher's full logits: as given, or `hidden · headᵀ` for a teacher given by hidden
    /// states (no graph); `None` for a top-k.
    pub fn logits(&self) -> Option<Tensor<B, D>> {
        match self {
            Self::Logits(t) => Some(t.clone()),
            Self::Hidden { hidden, head } => {
                Some(head_logits(hidden.clone().detach(), head.clone().detach()))
            }
            Self::TopK { .. } => None,
        }
    }

    /// The same teacher with its logits formed (see [`Self::logits`]).
    pub fn formed(self) -> Self {
        match self.logits() {
            Some(logits) => Self::Logits(logits),
            None => self,
        }
    }
}

impl<B: DivergenceBackend, const D: usize> TeacherTarget<B, D> {
    /// Checks the teacher against the student's shape and vocabulary. A precomputed top-k is
    /// checked on the evaluated `rows` only: padding positions may hold any id and −∞.
    pub(crate) fn validate(&self, student: &[usize], rows: &Rows) -> Result<()> {
        match self {
            TeacherTarget::Logits(t) => check::same_shape("teacher logits", student, &t.dims()),
            TeacherTarget::TopK { ids, log_probs } => {
                let ids_shape = ids.dims();
                let mut expected = student.to_vec();
                expected[D - 1] = ids_shape[D - 1];
                check::same_shape("teacher top-k ids", &expected, &ids_shape)?;
                check::same_shape("teacher top-k log-probs", &expected, &log_probs.dims())?;
                check::non_empty("teacher top-k ids", &ids_shape)?;
                check::ids_in_vocab(&rows.of(flatten(ids.clone())), student[D - 1])?;
                check::finite(
                    "teacher top-k log-probs",
                    &rows.of(flatten(log_probs.clone())),
                )
            }
            TeacherTarget::Hidden { hidden, head } => {
                let hidden_shape = hidden.dims();
                let mut expected = student.to_vec();
                expected[D - 1] = hidden_shape[D - 1];
                check::same_shape("teacher hidden states", &expected, &hidden_shape)?;
                check::non_empty("teacher hidden states", &hidden_shape)?;
                let width = hidden_shape[D - 1];
                check::same_shape(
                    "teacher output head",
                    &[student[D - 1], width],
                    &head.dims(),
                )
            }
        }
    }

    /// Flattens the leading axes: `[…, X] → [N, X]` as backend primitives.
    pub(crate) fn into_rows(self) -> TeacherLogits<B> {
        match self {
            TeacherTarget::Logits(t) => TeacherLogits::Logits(primitive(flatten(t))),
            TeacherTarget::TopK { ids, log_probs } => TeacherLogits::TopK {
                ids: flatten(ids).into_primitive(),
                log_probs: primitive(flatten(log_probs)),
            },
            TeacherTarget::Hidden { hidden, head } => TeacherLogits::Hidden {
                hidden: primitive(flatten(hidden)),
                head: primitive(head),
            },
        }
    }
}

pub(crate) fn flatten<B: DivergenceBackend, const D: usize, K>(
    t: Tensor<B, D, K>,
) -> Tensor<B, 2, K>
where
    K: burn::tensor::BasicOps<B>,
{
    let dims = t.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    t.reshape([rows, dims[D - 1]])
}

/// The divergence at each selected row of `student` (any rank, vocabulary last), checked.
pub(crate) fn divergence_at<B: DivergenceBackend, const D: usize>(
    student: Tensor<B, D>,
    teacher: TeacherTarget<B, D>,
    rows: Rows,
    options: DivergenceOptions,
) -> Result<Tensor<B, 1>> {
    let options = options.validated()?;
    let dims = student.dims();
    check::non_empty("student logits", &dims)?;
    teacher.validate(&dims, &rows)?;
    options.support.top_k(dims[D - 1])?;
    // The student's logits are whole: the teacher's are formed whole too, for the row kernels.
    let values = float(B::divergence_rows(
        primitive(flatten(student)),
        &teacher.formed().into_rows(),
        &rows,
        options,
    ));
    check::finite("divergence", &values)?;
    Ok(values)
}

/// `D(p_T(·|n) ‖ p_S(·|n))` at every position `n` of student logits `[N, V]`: output `[N]`.
///
/// Gradients flow into `student` only, through a closed-form backward evaluated in chunks of
/// `options.chunk_size` positions. Errors: shape mismatch (e.g. another vocabulary), empty
/// input, invalid options, or a non-finite result (NaN or infinite logits).
pub fn divergence<B: DivergenceBackend>(
    student: Tensor<B, 2>,
    teacher: TeacherTarget<B, 2>,
    options: DivergenceOptions,
) -> Result<Tensor<B, 1>> {
    divergence_at(student, teacher, Rows::All, options)
}

/// `log softmax(z_n / τ)[ids_n]` for logits `[N, V]` and ids `[N]`: the log-probability of
/// exactly the given tokens, output `[N]`. Backward: `(onehot(id) − p) / τ`, chunked.
pub fn token_log_probs<B: DivergenceBackend>(
    logits: Tensor<B, 2>,
    ids: Tensor<B, 1, Int>,
    temperature: f64,
    chunk_size: usize,
) -> Result<Tensor<B, 1>> {
    token_log_probs_at(logits, ids, Rows::All, temperature, chunk_size)
}

pub(crate) fn token_log_probs_at<B: DivergenceBackend, const D: usize>(
    logits: Tensor<B, D>,
    ids: Tensor<B, 1, Int>,
    rows: Rows,
    temperature: f64,
    chunk_size: usize,
) -> Result<Tensor<B, 1>> {
    let temperature = check::positive("temperature", temperature)?;
    if chunk_size == 0 {
        return Err(DivergenceError::InvalidParameter {
            name: "chunk_size",
            value: 0.0,
            expected: "at least 1 position per chunk",
        });
    }
    let dims = logits.dims();
    check::non_empty("logits", &dims)?;
    let positions = dims[..D - 1].iter().product::<usize>();
    check::same_shape("token ids", &[positions], &ids.dims())?;
    check::ids_in_vocab(&ids, dims[D - 1])?;
    let values = float(B::token_log_probs(
        primitive(flatten(logits)),
        ids.into_primitive(),
        &rows,
        temperature,
        chunk_size,
    ));
    check::finite("token log-prob", &values)?;
    Ok(values)
}
