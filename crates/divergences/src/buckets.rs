//! The per-chunk math: bucketed log-probabilities, divergence values and their closed-form
//! gradients, on a plain (non-autodiff) backend.
//!
//! A *bucket* is one outcome of the distributions being compared. On the full vocabulary every
//! token is a bucket. On a top-k support the buckets are the `k` selected tokens plus a tail
//! bucket holding the remaining mass, `p̃ = (p(v_1), …, p(v_k), 1 − Σ_i p(v_i))`.
//!
//! Every divergence `D(p̃_T, p̃_S)` here has a gradient of the same shape with respect to the
//! student's scaled logits `u = z_S / τ`:
//! `∂D/∂u_j = p_S(j) (h_{b(j)} − Σ_b p̃_S(b) h_b)`, where `b(j)` is token `j`'s bucket and
//! `h = ∂D/∂p̃_S` (up to an additive constant). Forward KL is written in a form that never
//! multiplies a vanishing probability by an overflowing ratio.

use burn::tensor::{IndexingUpdateOp, TensorPrimitive, ops::FloatTensor, ops::IntTensor};
use burn::tensor::{Int, Tensor, activation::log_softmax, backend::Backend, s};

use crate::kind::{Divergence, Support};

/// Smallest teacher tail mass used for a precomputed top-k whose log-probs sum to ~1.
const MIN_TAIL_MASS: f64 = 1e-12;

/// The teacher side of one call, on a plain backend.
#[derive(Debug, Clone)]
pub enum TeacherLogits<B: Backend> {
    /// Full teacher logits `[N, V]`.
    Logits(FloatTensor<B>),
    /// A precomputed teacher top-k: token ids `[N, k]` and their log-probs `[N, k]`.
    TopK {
        /// Token ids of the teacher's top-k entries.
        ids: IntTensor<B>,
        /// The teacher's log-probabilities at `ids`.
        log_probs: FloatTensor<B>,
    },
    /// The teacher's final hidden states `[N, d_T]` and its output head `[V, d_T]`: its logits
    /// `hidden · headᵀ` are formed a chunk of rows at a time, never whole.
    Hidden {
        /// Final hidden states, one row per position.
        hidden: FloatTensor<B>,
        /// The output head.
        head: FloatTensor<B>,
    },
}

/// The teacher side of one chunk, as tensors.
pub(crate) enum TeacherChunk<B: Backend> {
    Logits(Tensor<B, 2>),
    TopK {
        ids: Tensor<B, 2, Int>,
        log_probs: Tensor<B, 2>,
    },
}

impl<B: Backend> TeacherChunk<B> {
    /// The chunk as a teacher of its own rows.
    pub(crate) fn into_logits(self) -> TeacherLogits<B> {
        match self {
            Self::Logits(t) => TeacherLogits::Logits(primitive(t)),
            Self::TopK { ids, log_probs } => TeacherLogits::TopK {
                ids: ids.into_primitive(),
                log_probs: primitive(log_probs),
            },
        }
    }
}

/// Bucket log-probabilities of one chunk.
pub(crate) struct Buckets<B: Backend> {
    /// Student log-softmax over the full vocabulary, `[c, V]`.
    log_p_student: Tensor<B, 2>,
    /// Student bucket log-probs: `[c, V]` on the full support, `[c, k + 1]` on a top-k one.
    student: Tensor<B, 2>,
    /// Teacher bucket log-probs, same shape as `student`.
    teacher: Tensor<B, 2>,
    /// The selected token ids `[c, k]` of a top-k support.
    ids: Option<Tensor<B, 2, Int>>,
}

pub(crate) fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn scaled<B: Backend>(logits: Tensor<B, 2>, temperature: f64) -> Tensor<B, 2> {
    if temperature == 1.0 {
        logits
    } else {
        logits.div_scalar(temperature)
    }
}

/// `log Σ_j exp(x_j)` over dimension 1, stable: `m + log Σ exp(x − m)`.
pub(crate) fn logsumexp<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let max = x.clone().max_dim(1);
    (x - max.clone()).exp().sum_dim(1).log() + max
}

/// `log(e^a + e^b)`, stable.
fn logaddexp<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    let max = a.clone().max_pair(b.clone());
    let min = a.min_pair(b);
    (min - max.clone()).exp().log1p() + max
}

/// Log of the mass outside `ids`: the log-sum-exp of `log_p` with the selected entries removed.
fn tail_log_mass<B: Backend>(log_p: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [rows, k] = ids.dims();
    let removed = Tensor::full([rows, k], f32::NEG_INFINITY, &log_p.device());
    logsumexp(log_p.scatter(1, ids, removed, IndexingUpdateOp::Add))
}

/// `[x_1..x_k, tail]`: the bucket log-probs of a top-k support.
fn top_k_buckets<B: Backend>(log_p: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let selected = log_p.clone().gather(1, ids.clone());
    Tensor::cat(vec![selected, tail_log_mass(log_p, ids)], 1)
}

/// Expands bucket values `[c, k + 1]` to the vocabulary `[c, V]`: token `j` gets its bucket's value.
fn expand<B: Backend>(
    buckets: Tensor<B, 2>,
    ids: &Tensor<B, 2, Int>,
    vocab: usize,
) -> Tensor<B, 2> {
    let [rows, k1] = buckets.dims();
    let tail = buckets.clone().slice(s![.., k1 - 1..k1]);
    let selected = buckets.slice(s![.., 0..k1 - 1]) - tail.clone();
    Tensor::zeros([rows, vocab], &tail.device()).scatter(
        1,
        ids.clone(),
        selected,
        IndexingUpdateOp::Add,
    ) + tail
}

impl<B: Backend> Buckets<B> {
    /// Bucket log-probs for one chunk of student logits `[c, V]` and its teacher.
    pub(crate) fn new(
        student_logits: Tensor<B, 2>,
        teacher: TeacherChunk<B>,
        support: Support,
        temperature: f64,
    ) -> Self {
        let vocab = student_logits.dims()[1];
        let log_p_student = log_softmax(scaled(student_logits, temperature), 1);
        let top_k = support.top_k(vocab).ok().flatten();
        match teacher {
            TeacherChunk::Logits(teacher_logits) => {
                let log_p_teacher = log_softmax(scaled(teacher_logits, temperature), 1);
                let ids = match (support, top_k) {
                    (_, None) => {
                        return Self {
                            student: log_p_student.clone(),
                            log_p_student,
                            teacher: log_p_teacher,
                            ids: None,
                        };
                    }
                    (Support::StudentTopK(_), Some(k)) => {
                        log_p_student.clone().topk_with_indices(k, 1).1
                    }
                    (_, Some(k)) => log_p_teacher.clone().topk_with_indices(k, 1).1,
                };
                Self {
                    student: top_k_buckets(log_p_student.clone(), ids.clone()),
                    teacher: top_k_buckets(log_p_teacher, ids.clone()),
                    log_p_student,
                    ids: Some(ids),
                }
            }
            TeacherChunk::TopK { ids, log_probs } => {
                // 1 − Σ p, floored: served top-k log-probs can sum to 1 within rounding.
                let mass = logsumexp(log_probs.clone()).exp();
                let tail = mass.neg().add_scalar(1.0).clamp_min(MIN_TAIL_MASS).log();
                Self {
                    student: top_k_buckets(log_p_student.clone(), ids.clone()),
                    teacher: Tensor::cat(vec![log_probs, tail], 1),
                    log_p_student,
                    ids: Some(ids),
                }
            }
        }
    }

    /// Per-position divergence `Σ_b term(p̃_T(b), p̃_S(b))`, shape `[c]`.
    pub(crate) fn values(self, divergence: Divergence) -> Tensor<B, 1> {
        let (s, t) = (self.student, self.teacher);
        let terms = match divergence.resolved() {
            Divergence::ForwardKl => t.clone().exp() * (t - s),
            Divergence::ReverseKl => s.clone().exp() * (s - t),
            Divergence::Jsd { beta } => {
                let m = mixture(&s, &t, beta);
                t.clone().exp().mul_scalar(beta) * (t - m.clone())
                    + s.clone().exp().mul_scalar(1.0 - beta) * (s - m)
            }
        };
        terms.sum_dim(1).squeeze_dim(1)
    }

    /// `∂D/∂z_S`, shape `[c, V]`, including the `1/τ` of the temperature.
    pub(crate) fn gradient(self, divergence: Divergence, temperature: f64) -> Tensor<B, 2> {
        let Self {
            log_p_student,
            student: s,
            teacher: t,
            ids,
        } = self;
        let vocab = log_p_student.dims()[1];
        let p = log_p_student.clone().exp();
        let grad = match (divergence.resolved(), &ids) {
            (Divergence::ForwardKl, None) => p - t.exp(),
            // p_S(j) Σ_b p̃_T(b) − p_S(j) p̃_T(b(j)) / p̃_S(b(j)), the ratio taken in log space.
            (Divergence::ForwardKl, Some(ids)) => {
                let teacher_mass = t.clone().exp().sum_dim(1);
                let ratio = expand(t - s, ids, vocab);
                p * teacher_mass - (log_p_student + ratio).exp()
            }
            (Divergence::ReverseKl, _) => {
                let h = s.clone() - t;
                centred(p, s, h, ids.as_ref())
            }
            (Divergence::Jsd { beta }, _) => {
                let m = mixture(&s, &t, beta);
                let h = (s.clone() - m).mul_scalar(1.0 - beta);
                centred(p, s, h, ids.as_ref())
            }
        };
        if temperature == 1.0 {
            grad
        } else {
            grad.div_scalar(temperature)
        }
    }
}

/// `p ⊙ (H − Σ_b p̃_S(b) h_b)`: `H` is `h` spread over the vocabulary and
/// `p̃_S = exp(bucket_log_p)` (on the full support, `p` itself).
fn centred<B: Backend>(
    p: Tensor<B, 2>,
    bucket_log_p: Tensor<B, 2>,
    h: Tensor<B, 2>,
    ids: Option<&Tensor<B, 2, Int>>,
) -> Tensor<B, 2> {
    match ids {
        None => {
            let mean = (p.clone() * h.clone()).sum_dim(1);
            p * (h - mean)
        }
        Some(ids) => {
            let vocab = p.dims()[1];
            let mean = (bucket_log_p.exp() * h.clone()).sum_dim(1);
            p * (expand(h, ids, vocab) - mean)
        }
    }
}

/// `log m = log(β p_T + (1−β) p_S)` in log space.
fn mixture<B: Backend>(s: &Tensor<B, 2>, t: &Tensor<B, 2>, beta: f64) -> Tensor<B, 2> {
    logaddexp(
        t.clone().add_scalar(beta.ln()),
        s.clone().add_scalar((1.0 - beta).ln()),
    )
}

/// `log p(ids)` at temperature τ for logits `[c, V]` and ids `[c]`: `u_id − logsumexp(u)`.
pub(crate) fn token_log_probs<B: Backend>(
    logits: Tensor<B, 2>,
    ids: Tensor<B, 1, Int>,
    temperature: f64,
) -> Tensor<B, 1> {
    let log_p = log_softmax(scaled(logits, temperature), 1);
    log_p.gather(1, ids.unsqueeze_dim(1)).squeeze_dim(1)
}

/// `∂ log p(id) / ∂z = (onehot(id) − p) / τ` for logits `[c, V]` and ids `[c]`.
pub(crate) fn token_log_prob_gradient<B: Backend>(
    logits: Tensor<B, 2>,
    ids: Tensor<B, 1, Int>,
    temperature: f64,
) -> Tensor<B, 2> {
    let [rows, _] = logits.dims();
    let p = log_softmax(scaled(logits, temperature), 1).exp();
    let ones = Tensor::ones([rows, 1], &p.device());
    let grad = p
        .neg()
        .scatter(1, ids.unsqueeze_dim(1), ones, IndexingUpdateOp::Add);
    if temperature == 1.0 {
        grad
    } else {
        grad.div_scalar(temperature)
    }
}
