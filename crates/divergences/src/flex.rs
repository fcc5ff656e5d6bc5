//! Fused CPU kernels for burn's `Flex` backend.
//!
//! (Longer than most files here: the value and gradient kernels of the three divergences
//! share their row passes and the dispatch between them and the portable path; they are read
//! and changed together.)
//!
//! Each selected row is processed in a few passes over its `V` logits, in parallel over rows,
//! with no `[chunk, V]` temporaries: two log-sum-exps, then the value or the gradient written
//! straight into the output; a top-k support selects its ids in one pass (`O(V)`). Cases the
//! kernels do not cover (a precomputed teacher top-k, non-f32 or strided tensors) take the
//! portable path of [`crate::generic`].

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;
use burn::tensor::ops::{FloatTensor, IntTensor};

use crate::backend::DivergenceBackend;
use crate::buckets::TeacherLogits;
use crate::chunks::Rows;
use crate::fast_exp::exp;
use crate::flex_lanes::{BLOCK, LANES, max, threads};
use crate::flex_summary;
use crate::generic;
use crate::kind::{Divergence, DivergenceOptions, Support};
use crate::row_summary::RowSummary;

impl DivergenceBackend for Flex {
    fn divergence_rows(
        student: FloatTensor<Self>,
        teacher: &TeacherLogits<Self>,
        rows: &Rows,
        options: DivergenceOptions,
    ) -> FloatTensor<Self> {
        match Fused::new(&student, teacher, rows, options) {
            Some(fused) => vector(fused.values()),
            None => generic::divergence_rows::<Self>(student, teacher, rows, options),
        }
    }

    fn divergence_rows_backward(
        student: FloatTensor<Self>,
        teacher: &TeacherLogits<Self>,
        rows: &Rows,
        options: DivergenceOptions,
        grad_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match (
            Fused::new(&student, teacher, rows, options),
            grad_out.as_slice::<f32>(),
        ) {
            (Some(fused), Some(g)) => fused.gradient(g),
            _ => {
                generic::divergence_rows_backward::<Self>(student, teacher, rows, options, grad_out)
            }
        }
    }

    fn token_log_probs(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: &Rows,
        temperature: f64,
        chunk_size: usize,
    ) -> FloatTensor<Self> {
        match TokenKernel::new(&logits, &ids, rows, temperature) {
            Some(kernel) => vector(kernel.values()),
            None => generic::token_log_probs::<Self>(logits, ids, rows, temperature, chunk_size),
        }
    }

    fn token_log_probs_backward(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        rows: &Rows,
        temperature: f64,
        chunk_size: usize,
        values: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let kernel = TokenKernel::new(&logits, &ids, rows, temperature);
        match (kernel, values.as_slice::<f32>(), grad_out.as_slice::<f32>()) {
            (Some(kernel), Some(v), Some(g)) => kernel.gradient(v, g),
            _ => generic::token_log_probs_backward::<Self>(
                logits,
                ids,
                rows,
                temperature,
                chunk_size,
                grad_out,
            ),
        }
    }

    fn summarize_rows(logits: FloatTensor<Self>, temperature: f64, k: usize) -> RowSummary {
        match logits.as_slice::<f32>() {
            Some(z) => flex_summary::summarize(z, logits.layout().shape()[1], temperature, k),
            None => generic::summarize_rows::<Self>(logits, temperature, k),
        }
    }
}

fn vector(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::from_data(TensorData::new(values, [n]))
}

/// The selected rows in output order.
fn row_list(rows: &Rows, total: usize) -> Vec<usize> {
    match rows {
        Rows::All => (0..total).collect(),
        Rows::Selected(rows) => rows.to_vec(),
    }
}

/// Computes `f(row)` for every listed row, in parallel, in order.
fn per_row(rows: &[usize], f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; rows.len()];
    let per_thread = rows.len().div_ceil(threads()).max(1);
    std::thread::scope(|scope| {
        for (out, rows) in out.chunks_mut(per_thread).zip(rows.chunks(per_thread)) {
            let f = &f;
            scope.spawn(move || {
                for (o, &r) in out.iter_mut().zip(rows) {
                    *o = f(r);
                }
            });
        }
    });
    out
}

/// An `[N, V]` gradient with `f(row, upstream, out_row)` writing each selected row (in
/// parallel); unselected rows stay zero and their pages are never touched.
fn gradient_rows(
    total: usize,
    vocab: usize,
    rows: &[usize],
    grad_out: &[f32],
    f: impl Fn(usize, f32, &mut [f32]) + Sync,
) -> FlexTensor {
    let mut upstream = vec![None; total];
    for (&r, &g) in rows.iter().zip(grad_out) {
        upstream[r] = Some(upstream[r].unwrap_or(0.0) + g);
    }
    let mut grad = vec![0f32; total * vocab];
    let rows_per_thread = total.div_ceil(threads()).max(1);
    std::thread::scope(|scope| {
        for (block, (grad, upstream)) in grad
            .chunks_mut(rows_per_thread * vocab)
            .zip(upstream.chunks(rows_per_thread))
            .enumerate()
        {
            let f = &f;
            scope.spawn(move || {
                for (i, (out, g)) in grad.chunks_mut(vocab).zip(upstream).enumerate() {
                    if let Some(g) = *g {
                        f(block * rows_per_thread + i, g, out);
                    }
                }
            });
        }
    });
    FlexTensor::from_data(TensorData::new(grad, [total, vocab]))
}

/// Inputs of the fused kernel: full teacher logits, full or top-k support.
struct Fused<'a> {
    student: &'a [f32],
    teacher: &'a [f32],
    vocab: usize,
    rows: Vec<usize>,
    divergence: Divergence,
    inv_tau: f32,
    /// `k` and whether the teacher (else the student) picks the support; `None`: full.
    top_k: Option<(usize, bool)>,
}

impl<'a> Fused<'a> {
    fn new(
        student: &'a FlexTensor,
        teacher: &'a TeacherLogits<Flex>,
        rows: &Rows,
        options: DivergenceOptions,
    ) -> Option<Self> {
        let TeacherLogits::Logits(teacher) = teacher else {
            return None;
        };
        let dims = student.layout().shape().to_vec();
        let [total, vocab] = dims[..] else {
            return None;
        };
        let top_k = options
            .support
            .top_k(vocab)
            .ok()?
            .map(|k| (k, !matches!(options.support, Support::StudentTopK(_))));
        Some(Self {
            student: student.as_slice::<f32>()?,
            teacher: teacher.as_slice::<f32>()?,
            vocab,
            rows: row_list(rows, total),
            divergence: options.divergence.resolved(),
            inv_tau: (1.0 / options.temperature) as f32,
            top_k,
        })
    }

    fn logits(&self, r: usize) -> (&[f32], &[f32]) {
        let range = r * self.vocab..(r + 1) * self.vocab;
        (&self.student[range.clone()], &self.teacher[range])
    }

    fn row(&self, r: usize) -> Row<'_> {
        let (zs, zt) = self.logits(r);
        Row {
            zs,
            zt,
            inv_tau: self.inv_tau,
            lse_s: log_sum_exp(zs, self.inv_tau),
            lse_t: log_sum_exp(zt, self.inv_tau),
        }
    }

    fn top_k_row(&self, r: usize, k: usize, by_teacher: bool) -> TopKRow<'_> {
        let (zs, zt) = self.logits(r);
        TopKRow::new(zs, zt, k, by_teacher, self.inv_tau)
    }

    fn values(&self) -> Vec<f32> {
        per_row(&self.rows, |r| match self.top_k {
            None => self.row(r).value(self.divergence) as f32,
            Some((k, by_teacher)) => self.top_k_row(r, k, by_teacher).value(self.divergence),
        })
    }

    fn gradient(&self, grad_out: &[f32]) -> FlexTensor {
        let total = self.student.len() / self.vocab;
        gradient_rows(
            total,
            self.vocab,
            &self.rows,
            grad_out,
            |r, g, out| match self.top_k {
                None => self.row(r).gradient(self.divergence, g, out),
                Some((k, by_teacher)) => {
                    self.top_k_row(r, k, by_teacher)
                        .gradient(self.divergence, g, out)
                }
            },
        )
    }
}

/// One position on a top-k support: bucket log-probs `[x(v_1..v_k), x(tail)]` of both models.
struct TopKRow<'a> {
    zs: &'a [f32],
    inv_tau: f32,
    ids: Vec<usize>,
    lse_s: f32,
    student: Vec<f32>,
    teacher: Vec<f32>,
}

impl<'a> TopKRow<'a> {
    fn new(zs: &'a [f32], zt: &'a [f32], k: usize, by_teacher: bool, inv_tau: f32) -> Self {
        let ids = top_k_ids(if by_teacher { zt } else { zs }, k);
        // `−∞` at the selected ids, 0 elsewhere: added to `z / τ`, it leaves the tail.
        let mut outside = vec![0f32; zs.len()];
        ids.iter().for_each(|&i| outside[i] = f32::NEG_INFINITY);
        let (student, lse_s) = buckets(zs, &ids, &outside, inv_tau);
        let (teacher, _) = buckets(zt, &ids, &outside, inv_tau);
        Self {
            zs,
            inv_tau,
            ids,
            lse_s,
            student,
            teacher,
        }
    }

    fn value(&self, divergence: Divergence) -> f32 {
        let terms = self.student.iter().zip(&self.teacher);
        terms
            .map(|(&s, &t)| term(divergence, s, t) as f64)
            .sum::<f64>() as f32
    }

    /// Writes `g ∂D/∂z_S`: `p_S(j) (h_{b(j)} − Σ_b p̃_S(b) h_b)`, forward KL in log space.
    fn gradient(&self, divergence: Divergence, g: f32, out: &mut [f32]) {
        let scale = g * self.inv_tau;
        let tail = self.ids.len();
        let (inv_tau, lse_s) = (self.inv_tau, self.lse_s);
        let log_p = |z: f32| z * inv_tau - lse_s;
        if let Divergence::ForwardKl = divergence {
            let teacher_mass: f32 = self.teacher.iter().map(|&t| exp(t)).sum();
            let shift = self.teacher[tail] - self.student[tail];
            for (o, &z) in out.iter_mut().zip(self.zs) {
                let s = log_p(z);
                *o = scale * (exp(s) * teacher_mass - exp(s + shift));
            }
            for (b, &i) in self.ids.iter().enumerate() {
                out[i] = scale * (exp(self.student[b]) * teacher_mass - exp(self.teacher[b]));
            }
            return;
        }
        let h: Vec<f32> = self
            .student
            .iter()
            .zip(&self.teacher)
            .map(|(&s, &t)| score(divergence, s, t))
            .collect();
        let mean: f32 = self.student.iter().zip(&h).map(|(&s, &h)| exp(s) * h).sum();
        let tail_factor = h[tail] - mean;
        for (o, &z) in out.iter_mut().zip(self.zs) {
            *o = scale * exp(log_p(z)) * tail_factor;
        }
        for (b, &i) in self.ids.iter().enumerate() {
            out[i] = scale * exp(self.student[b]) * (h[b] - mean);
        }
    }
}

/// The `k` largest entries' indices, largest first (ties broken by position), selected in one
/// pass.
fn top_k_ids(z: &[f32], k: usize) -> Vec<usize> {
    let mut top = Vec::with_capacity(k + 1);
    flex_summary::top_k(z, k, &mut top);
    top.into_iter().map(|(_, id)| id).collect()
}

/// Bucket log-probs `[u_i − lse for i in ids] ++ [lse_tail − lse]` of `u = z / τ`, and `lse`;
/// `outside` is `−∞` at the ids and 0 elsewhere. The tail's log-mass is a log-sum-exp over the
/// complement (its own max), never `1 − Σ p`; both passes run in [`LANES`] lanes.
fn buckets(z: &[f32], ids: &[usize], outside: &[f32], inv_tau: f32) -> (Vec<f32>, f32) {
    let tail_max = max_pairs(z, outside, |x, o| x * inv_tau + o);
    // Logits are finite (checked by the public functions), and `k < V`, so the tail has a
    // largest term `e^0 = 1`; at the ids `e^{−∞}` flushes to the smallest normal float, and k
    // of those are negligible next to it.
    let tail_sum = sum_pairs(z, outside, |x, o| exp(x * inv_tau + o - tail_max));
    let tail = tail_max + (tail_sum as f32).ln();
    let mut out: Vec<f32> = ids.iter().map(|&i| z[i] * inv_tau).collect();
    out.push(tail);
    let max = out.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let lse = max + out.iter().map(|&x| exp(x - max)).sum::<f32>().ln();
    out.iter_mut().for_each(|x| *x -= lse);
    (out, lse)
}

/// One bucket's contribution to the divergence.
fn term(divergence: Divergence, s: f32, t: f32) -> f32 {
    match divergence {
        Divergence::ForwardKl => exp(t) * (t - s),
        Divergence::ReverseKl => exp(s) * (s - t),
        Divergence::Jsd { beta } => {
            let (b, c) = (beta as f32, 1.0 - beta as f32);
            let m = (b * exp(t) + c * exp(s)).ln();
            b * exp(t) * (t - m) + c * exp(s) * (s - m)
        }
    }
}

/// `h = ∂D/∂p̃_S` up to a constant, for reverse KL and JSD.
fn score(divergence: Divergence, s: f32, t: f32) -> f32 {
    match divergence {
        Divergence::Jsd { beta } => {
            let (b, c) = (beta as f32, 1.0 - beta as f32);
            c * (s - (b * exp(t) + c * exp(s)).ln())
        }
        _ => s - t,
    }
}

/// One position: logits of both models and their log-normalizers at temperature τ.
struct Row<'a> {
    zs: &'a [f32],
    zt: &'a [f32],
    inv_tau: f32,
    lse_s: f32,
    lse_t: f32,
}

impl Row<'_> {
    /// `(log p_S(v), log p_T(v))` for every `v`.
    fn log_probs(&self) -> impl Iterator<Item = (f32, f32)> + '_ {
        self.zs.iter().zip(self.zt).map(|(&zs, &zt)| {
            (
                zs * self.inv_tau - self.lse_s,
                zt * self.inv_tau - self.lse_t,
            )
        })
    }

    /// `Σ_v term(s_v, t_v)`, accumulated in f64.
    fn value(&self, divergence: Divergence) -> f64 {
        match divergence {
            Divergence::ForwardKl => self.sum(|s, t| exp(t) * (t - s)),
            Divergence::ReverseKl => self.sum(|s, t| exp(s) * (s - t)),
            Divergence::Jsd { beta } => {
                let (b, c) = (beta as f32, 1.0 - beta as f32);
                self.sum(|s, t| {
                    let (ps, pt) = (exp(s), exp(t));
                    let m = (b * pt + c * ps).ln();
                    b * pt * (t - m) + c * ps * (s - m)
                })
            }
        }
    }

    fn sum(&self, term: impl Fn(f32, f32) -> f32) -> f64 {
        let (inv_tau, lse_s, lse_t) = (self.inv_tau, self.lse_s, self.lse_t);
        sum_pairs(self.zs, self.zt, |zs, zt| {
            term(zs * inv_tau - lse_s, zt * inv_tau - lse_t)
        })
    }

    /// Writes `g ∂D/∂z_S` into `out` (the closed forms of [`Divergence`]).
    fn gradient(&self, divergence: Divergence, g: f32, out: &mut [f32]) {
        let scale = g * self.inv_tau;
        let write = |out: &mut [f32], f: &dyn Fn(f32, f32) -> f32| {
            for (o, (s, t)) in out.iter_mut().zip(self.log_probs()) {
                *o = scale * f(s, t);
            }
        };
        match divergence {
            Divergence::ForwardKl => write(out, &|s, t| exp(s) - exp(t)),
            Divergence::ReverseKl => {
                let mean = self.value(Divergence::ReverseKl) as f32;
                write(out, &|s, t| exp(s) * (s - t - mean));
            }
            Divergence::Jsd { beta } => {
                let (b, c) = (beta as f32, 1.0 - beta as f32);
                let e = |s: f32, t: f32| s - (b * exp(t) + c * exp(s)).ln();
                let mean = self.sum(|s, t| exp(s) * e(s, t)) as f32;
                write(out, &|s, t| c * exp(s) * (e(s, t) - mean));
            }
        }
    }
}

/// Inputs of the fused token log-prob kernel.
struct TokenKernel<'a> {
    logits: &'a [f32],
    ids: Vec<i64>,
    vocab: usize,
    rows: Vec<usize>,
    inv_tau: f32,
}

impl<'a> TokenKernel<'a> {
    fn new(
        logits: &'a FlexTensor,
        ids: &FlexTensor,
        rows: &Rows,
        temperature: f64,
    ) -> Option<Self> {
        let [total, vocab] = logits.layout().shape().to_vec()[..] else {
            return None;
        };
        let ids: Vec<i64> = match (ids.as_slice::<i32>(), ids.as_slice::<i64>()) {
            (Some(ids), _) => ids.iter().map(|&i| i as i64).collect(),
            (None, Some(ids)) => ids.to_vec(),
            _ => return None,
        };
        Some(Self {
            logits: logits.as_slice::<f32>()?,
            ids,
            vocab,
            rows: row_list(rows, total),
            inv_tau: (1.0 / temperature) as f32,
        })
    }

    fn row(&self, r: usize) -> (&[f32], usize, f32) {
        let z = &self.logits[r * self.vocab..(r + 1) * self.vocab];
        (z, self.ids[r] as usize, log_sum_exp(z, self.inv_tau))
    }

    fn values(&self) -> Vec<f32> {
        per_row(&self.rows, |r| {
            let (z, id, lse) = self.row(r);
            z[id] * self.inv_tau - lse
        })
    }

    /// The gradient, each row's `lse` recovered from the forward's `values`.
    fn gradient(&self, values: &[f32], grad_out: &[f32]) -> FlexTensor {
        let total = self.logits.len() / self.vocab;
        let mut lse = vec![0f32; total];
        for (&r, &v) in self.rows.iter().zip(values) {
            lse[r] = self.logits[r * self.vocab + self.ids[r] as usize] * self.inv_tau - v;
        }
        gradient_rows(total, self.vocab, &self.rows, grad_out, |r, g, out| {
            let z = &self.logits[r * self.vocab..(r + 1) * self.vocab];
            let (id, lse) = (self.ids[r] as usize, lse[r]);
            let scale = g * self.inv_tau;
            for (o, &z) in out.iter_mut().zip(z) {
                *o = -scale * exp(z * self.inv_tau - lse);
            }
            out[id] += scale;
        })
    }
}

/// `log Σ_v exp(z_v / τ)`, stable.
fn log_sum_exp(z: &[f32], inv_tau: f32) -> f32 {
    let max = max(z) * inv_tau;
    let sum = sum_pairs(z, z, |x, _| exp(x * inv_tau - max));
    max + (sum as f32).ln()
}

/// `Σ_i f(a_i, b_i)` over equal-length slices, in `LANES` f32 lanes per block of `BLOCK`
/// elements and an f64 total: vectorized, and accurate over 152k terms.
fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut total = 0f64;
    for (a, b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (a_lanes, a_rest) = a.as_chunks::<LANES>();
        let (b_lanes, b_rest) = b.as_chunks::<LANES>();
        let mut acc = [0f32; LANES];
        for (x, y) in a_lanes.iter().zip(b_lanes) {
            for l in 0..LANES {
                acc[l] += f(x[l], y[l]);
            }
        }
        let rest: f32 = a_rest.iter().zip(b_rest).map(|(&x, &y)| f(x, y)).sum();
        total += (acc.iter().sum::<f32>() + rest) as f64;
    }
    total
}

/// `max_i f(a_i, b_i)` over equal-length slices, in `LANES` independent lanes.
fn max_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let (a_lanes, a_rest) = a.as_chunks::<LANES>();
    let (b_lanes, b_rest) = b.as_chunks::<LANES>();
    let mut acc = [f32::NEG_INFINITY; LANES];
    for (x, y) in a_lanes.iter().zip(b_lanes) {
        for l in 0..LANES {
            acc[l] = acc[l].max(f(x[l], y[l]));
        }
    }
    let rest = a_rest.iter().zip(b_rest).map(|(&x, &y)| f(x, y));
    acc.into_iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, f32::max)
}
