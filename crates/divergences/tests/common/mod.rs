//! Test support: an independent f64 reference on the host, random logits, tensor helpers.
#![allow(dead_code)]

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};

pub type Plain = Flex;
pub type B = Autodiff<Flex>;

pub fn device() -> burn::backend::flex::FlexDevice {
    Default::default()
}

/// Row-major matrix of f64.
#[derive(Clone, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    pub fn random(rows: usize, cols: usize, scale: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let data = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect();
        Self { rows, cols, data }
    }
    pub fn tensor<BK: burn::tensor::backend::Backend>(&self) -> Tensor<BK, 2> {
        let data: Vec<f32> = self.data.iter().map(|&x| x as f32).collect();
        Tensor::from_data(
            TensorData::new(data, [self.rows, self.cols]),
            &Default::default(),
        )
    }
    /// Rounds to f32, so the reference sees exactly what the tensors hold.
    pub fn rounded_to_f32(mut self) -> Self {
        self.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
        self
    }
}

/// Divergence values per row and the gradient of their sum w.r.t. the student logits.
pub fn values_and_gradient<BK>(
    zs: &Mat,
    zt: &Mat,
    options: opd_divergences::DivergenceOptions,
) -> (Vec<f64>, Vec<f64>)
where
    BK: opd_divergences::DivergenceBackend + burn::tensor::backend::AutodiffBackend,
{
    let student = zs.tensor::<BK>().require_grad();
    let teacher = opd_divergences::TeacherTarget::Logits(zt.tensor::<BK>());
    let d = opd_divergences::divergence(student.clone(), teacher, options).unwrap();
    let values = to_vec(d.clone());
    let grads = d.sum().backward();
    (values, to_vec(student.grad(&grads).unwrap()))
}

pub fn to_vec<BK: burn::tensor::backend::Backend, const D: usize>(t: Tensor<BK, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

pub fn int_tensor<BK: burn::tensor::backend::Backend, const D: usize>(
    data: Vec<i64>,
    shape: [usize; D],
) -> Tensor<BK, D, Int> {
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

pub fn ref_log_softmax(z: &[f64], tau: f64) -> Vec<f64> {
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max) / tau;
    let lse = max + z.iter().map(|x| (x / tau - max).exp()).sum::<f64>().ln();
    z.iter().map(|x| x / tau - lse).collect()
}

fn lse(x: &[f64]) -> f64 {
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    max + x.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Which reference divergence.
#[derive(Clone, Copy, Debug)]
pub enum RefDiv {
    Fkl,
    Rkl,
    Jsd(f64),
}

/// Divergence between two bucket log-prob vectors.
pub fn div_logp(s: &[f64], t: &[f64], d: RefDiv) -> f64 {
    let beta = match d {
        RefDiv::Fkl => 0.0,
        RefDiv::Rkl => 1.0,
        RefDiv::Jsd(b) => b,
    };
    if beta == 0.0 {
        return s.iter().zip(t).map(|(s, t)| t.exp() * (t - s)).sum();
    }
    if beta == 1.0 {
        return s.iter().zip(t).map(|(s, t)| s.exp() * (s - t)).sum();
    }
    s.iter()
        .zip(t)
        .map(|(&s, &t)| {
            let m = (beta * t.exp() + (1.0 - beta) * s.exp()).ln();
            beta * t.exp() * (t - m) + (1.0 - beta) * s.exp() * (s - m)
        })
        .sum()
}

/// Top-k buckets `[x_ids..., log(1 − Σ exp x_ids)]` computed from the complement.
pub fn buckets(logp: &[f64], ids: &[usize]) -> Vec<f64> {
    let mut out: Vec<f64> = ids.iter().map(|&i| logp[i]).collect();
    let rest: Vec<f64> = (0..logp.len())
        .filter(|i| !ids.contains(i))
        .map(|i| logp[i])
        .collect();
    if !rest.is_empty() {
        out.push(lse(&rest));
    }
    out
}

pub fn top_k_ids(x: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap());
    idx.truncate(k);
    idx
}

/// Reference support.
#[derive(Clone, Copy, Debug)]
pub enum RefSupport {
    Full,
    TeacherTopK(usize),
    StudentTopK(usize),
}

/// Reference divergence of one row.
pub fn reference(zs: &[f64], zt: &[f64], d: RefDiv, support: RefSupport, tau: f64) -> f64 {
    let s = ref_log_softmax(zs, tau);
    let t = ref_log_softmax(zt, tau);
    match support {
        RefSupport::Full => div_logp(&s, &t, d),
        RefSupport::TeacherTopK(k) => {
            let ids = top_k_ids(&t, k);
            div_logp(&buckets(&s, &ids), &buckets(&t, &ids), d)
        }
        RefSupport::StudentTopK(k) => {
            let ids = top_k_ids(&s, k);
            div_logp(&buckets(&s, &ids), &buckets(&t, &ids), d)
        }
    }
}

/// Central finite differences of `f` at `z`, step `h`.
pub fn finite_differences(z: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    (0..z.len())
        .map(|i| {
            let mut plus = z.to_vec();
            let mut minus = z.to_vec();
            plus[i] += h;
            minus[i] -= h;
            (f(&plus) - f(&minus)) / (2.0 * h)
        })
        .collect()
}

pub fn assert_close(what: &str, actual: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= atol + rtol * e.abs(),
            "{what}[{i}]: got {a}, expected {e} (atol {atol}, rtol {rtol})"
        );
    }
}

/// A fused head's values (a backend primitive) and, for the loss `Σ_r w_r value_r`, the
/// gradients to `hidden` and, when it takes one, `head`.
pub fn weighted_values_and_gradients(
    values: burn::tensor::ops::FloatTensor<B>,
    hidden: &Tensor<B, 2>,
    head: &Tensor<B, 2>,
    weights: &[f64],
) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let values = Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(values));
    let g: Vec<f32> = weights.iter().map(|&x| x as f32).collect();
    let g = Tensor::<B, 1>::from_floats(g.as_slice(), &device());
    let grads = (values.clone() * g).sum().backward();
    (
        to_vec(values),
        to_vec(
            hidden
                .grad(&grads)
                .expect("the hidden states take a gradient"),
        ),
        head.grad(&grads).map(to_vec),
    )
}

/// What a fused head is told about the loss's weights on its values (`HeadOptions::linear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guess {
    /// Nothing: a head that trains forms its blocks again in the backward.
    None,
    /// The weights the loss uses, times −3: the gradients come from the forward.
    Right,
    /// Other weights (reversed): the backward's check fails and forms the blocks again.
    Wrong,
}

impl Guess {
    pub const ALL: [Guess; 3] = [Guess::None, Guess::Right, Guess::Wrong];

    /// The guessed weights `[rows]` as the backend hooks take them.
    pub fn weights(self, weights: &[f64]) -> Option<burn::tensor::ops::FloatTensor<B>> {
        let guessed: Vec<f32> = match self {
            Guess::None => return None,
            Guess::Right => weights.iter().map(|&w| (-3.0 * w) as f32).collect(),
            Guess::Wrong => weights.iter().rev().map(|&w| w as f32).collect(),
        };
        Some(
            Tensor::<B, 1>::from_floats(guessed.as_slice(), &device())
                .into_primitive()
                .tensor(),
        )
    }
}
