//! Fused CPU kernels for burn's `Flex` backend.
//!
//! Each selected row is processed in a few passes over its `V` logits, in parallel over rows,
//! with no `[chunk, V]` temporaries: two log-sum-exps, then the value or the gradient written
//! straight into the output. Cases the kernels do not cover (top-k supports, a precomputed
//! teacher top-k, non-f32 or strided tensors) take the portable path of [`crate::generic`].

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;
use burn::tensor::ops::{FloatTensor, IntTensor};

use crate::backend::DivergenceBackend;
use crate::buckets::TeacherLogits;
use crate::chunks::Rows;
use crate::generic;
use crate::kind::{Divergence, DivergenceOptions};

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
        grad_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let kernel = TokenKernel::new(&logits, &ids, rows, temperature);
        match (kernel, grad_out.as_slice::<f32>()) {
            (Some(kernel), Some(g)) => kernel.gradient(g),
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

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

/// Inputs of the fused full-vocabulary kernel.
struct Fused<'a> {
    student: &'a [f32],
    teacher: &'a [f32],
    vocab: usize,
    rows: Vec<usize>,
    divergence: Divergence,
    inv_tau: f32,
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
        options.support.top_k(vocab).ok()?.is_none().then_some(())?;
        Some(Self {
            student: student.as_slice::<f32>()?,
            teacher: teacher.as_slice::<f32>()?,
            vocab,
            rows: row_list(rows, total),
            divergence: options.divergence.resolved(),
            inv_tau: (1.0 / options.temperature) as f32,
        })
    }

    fn row(&self, r: usize) -> Row<'_> {
        let range = r * self.vocab..(r + 1) * self.vocab;
        let (zs, zt) = (&self.student[range.clone()], &self.teacher[range]);
        Row {
            zs,
            zt,
            inv_tau: self.inv_tau,
            lse_s: log_sum_exp(zs, self.inv_tau),
            lse_t: log_sum_exp(zt, self.inv_tau),
        }
    }

    fn values(&self) -> Vec<f32> {
        per_row(&self.rows, |r| self.row(r).value(self.divergence) as f32)
    }

    fn gradient(&self, grad_out: &[f32]) -> FlexTensor {
        let total = self.student.len() / self.vocab;
        gradient_rows(total, self.vocab, &self.rows, grad_out, |r, g, out| {
            self.row(r).gradient(self.divergence, g, out)
        })
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
        self.log_probs().map(|(s, t)| term(s, t) as f64).sum()
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

    fn gradient(&self, grad_out: &[f32]) -> FlexTensor {
        let total = self.logits.len() / self.vocab;
        gradient_rows(total, self.vocab, &self.rows, grad_out, |r, g, out| {
            let (z, id, lse) = self.row(r);
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
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * inv_tau;
    let sum: f32 = z.iter().map(|&x| exp(x * inv_tau - max)).sum();
    max + sum.ln()
}

/// `e^x` for `x ≤ 88`, within 2 ulp (Cephes `expf`): `2^n · e^r` with `|r| ≤ ln2 / 2`.
/// Branch-free so loops over it vectorize; inputs below −87.3 give the smallest normal float.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting rounds to an integer
    let x = x.clamp(-87.336_55, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate_over_the_range_log_probs_take() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (ours, exact) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max((ours - exact).abs() / exact);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(super::exp(-1e4) < 1e-37 && super::exp(-1e4) >= 0.0);
    }
}
