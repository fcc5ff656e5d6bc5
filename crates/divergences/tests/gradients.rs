//! Gradients: our closed-form chunked backward against burn's autodiff of the naive formula,
//! against the closed forms of SPEC.md, and against finite differences of an f64 reference.

// Rows, weights and ids are parallel arrays: indexing them together reads best.
#![allow(clippy::needless_range_loop)]

mod common;

use burn::tensor::{Tensor, activation::log_softmax};
use common::*;
use opd_divergences::{
    Divergence, DivergenceOptions, Support, TeacherTarget, divergence, token_log_probs,
};

const DIVERGENCES: [Divergence; 5] = [
    Divergence::ForwardKl,
    Divergence::ReverseKl,
    Divergence::Jsd { beta: 0.1 },
    Divergence::Jsd { beta: 0.5 },
    Divergence::Jsd { beta: 0.9 },
];

fn ref_div(d: Divergence) -> RefDiv {
    match d {
        Divergence::ForwardKl => RefDiv::Fkl,
        Divergence::ReverseKl => RefDiv::Rkl,
        Divergence::Jsd { beta } => RefDiv::Jsd(beta),
    }
}

fn ref_support(s: Support) -> RefSupport {
    match s {
        Support::Full => RefSupport::Full,
        Support::TeacherTopK(k) => RefSupport::TeacherTopK(k),
        Support::StudentTopK(k) => RefSupport::StudentTopK(k),
    }
}

/// Our gradient of `Σ_n w_n D_n` w.r.t. the student logits, with per-row weights `w`
/// (so the upstream gradient is not all ones).
fn our_gradient(zs: &Mat, zt: &Mat, options: DivergenceOptions, weights: &[f64]) -> Vec<f64> {
    let student = zs.tensor::<B>().require_grad();
    let d = divergence(
        student.clone(),
        TeacherTarget::Logits(zt.tensor::<B>()),
        options,
    )
    .unwrap();
    let w = Mat {
        rows: 1,
        cols: weights.len(),
        data: weights.to_vec(),
    }
    .tensor::<B>()
    .reshape([weights.len()]);
    let grads = (d * w).sum().backward();
    to_vec(student.grad(&grads).unwrap())
}

/// The same loss written naively with burn ops, differentiated by burn's autodiff.
fn autodiff_gradient(zs: &Mat, zt: &Mat, d: Divergence, tau: f64, weights: &[f64]) -> Vec<f64> {
    let student = zs.tensor::<B>().require_grad();
    let s = log_softmax(student.clone().div_scalar(tau), 1);
    let t = log_softmax(zt.tensor::<B>().div_scalar(tau), 1);
    let terms = match d.resolved() {
        Divergence::ForwardKl => t.clone().exp() * (t - s),
        Divergence::ReverseKl => s.clone().exp() * (s - t),
        Divergence::Jsd { beta } => {
            let m =
                (t.clone().exp().mul_scalar(beta) + s.clone().exp().mul_scalar(1.0 - beta)).log();
            t.clone().exp().mul_scalar(beta) * (t - m.clone())
                + s.clone().exp().mul_scalar(1.0 - beta) * (s - m)
        }
    };
    let w = Mat {
        rows: weights.len(),
        cols: 1,
        data: weights.to_vec(),
    }
    .tensor::<B>();
    let grads = (terms * w).sum().backward();
    to_vec(student.grad(&grads).unwrap())
}

/// The closed forms of SPEC.md, on the host in f64.
fn closed_form_gradient(zs: &[f64], zt: &[f64], d: Divergence, tau: f64) -> Vec<f64> {
    let s = ref_log_softmax(zs, tau);
    let t = ref_log_softmax(zt, tau);
    let p: Vec<f64> = s.iter().map(|x| x.exp()).collect();
    let centred = |scale: f64, e: Vec<f64>| -> Vec<f64> {
        let mean: f64 = p.iter().zip(&e).map(|(p, e)| p * e).sum();
        p.iter()
            .zip(&e)
            .map(|(p, e)| scale * p * (e - mean) / tau)
            .collect()
    };
    match d.resolved() {
        Divergence::ForwardKl => p.iter().zip(&t).map(|(p, t)| (p - t.exp()) / tau).collect(),
        Divergence::ReverseKl => centred(1.0, s.iter().zip(&t).map(|(s, t)| s - t).collect()),
        Divergence::Jsd { beta } => {
            let e = s
                .iter()
                .zip(&t)
                .map(|(&s, &t)| s - (beta * t.exp() + (1.0 - beta) * s.exp()).ln())
                .collect();
            centred(1.0 - beta, e)
        }
    }
}

fn fd_gradient(
    zs: &Mat,
    zt: &Mat,
    d: Divergence,
    support: Support,
    tau: f64,
    w: &[f64],
) -> Vec<f64> {
    let mut out = Vec::new();
    for r in 0..zs.rows {
        let g = finite_differences(zs.row(r), 1e-5, |z| {
            reference(z, zt.row(r), ref_div(d), ref_support(support), tau)
        });
        out.extend(g.into_iter().map(|g| g * w[r]));
    }
    out
}

#[test]
fn full_vocabulary_gradients_match_autodiff_closed_form_and_finite_differences() {
    let zs = Mat::random(5, 11, 3.0, 1).rounded_to_f32();
    let zt = Mat::random(5, 11, 3.0, 2).rounded_to_f32();
    let weights = [1.0, -0.5, 2.0, 0.25, 1.5];
    for d in DIVERGENCES {
        for tau in [1.0, 0.7, 2.0] {
            for chunk in [1, 2, 64] {
                let options = DivergenceOptions::new(d)
                    .with_temperature(tau)
                    .with_chunk_size(chunk);
                let ours = our_gradient(&zs, &zt, options, &weights);
                let autodiff = autodiff_gradient(&zs, &zt, d, tau, &weights);
                assert_close(
                    &format!("{d:?} τ={tau} chunk={chunk} vs autodiff"),
                    &ours,
                    &autodiff,
                    2e-6,
                    1e-4,
                );
                let mut closed = Vec::new();
                for r in 0..zs.rows {
                    let g = closed_form_gradient(zs.row(r), zt.row(r), d, tau);
                    closed.extend(g.into_iter().map(|g| g * weights[r]));
                }
                assert_close(
                    &format!("{d:?} τ={tau} vs closed form"),
                    &ours,
                    &closed,
                    2e-6,
                    1e-4,
                );
                let fd = fd_gradient(&zs, &zt, d, Support::Full, tau, &weights);
                assert_close(
                    &format!("{d:?} τ={tau} vs finite differences"),
                    &ours,
                    &fd,
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn top_k_gradients_match_finite_differences() {
    let zs = Mat::random(4, 13, 4.0, 3).rounded_to_f32();
    let zt = Mat::random(4, 13, 4.0, 4).rounded_to_f32();
    let weights = [1.0, 0.5, -1.0, 2.0];
    for d in DIVERGENCES {
        for support in [
            Support::TeacherTopK(1),
            Support::TeacherTopK(4),
            Support::StudentTopK(5),
        ] {
            for tau in [1.0, 1.5] {
                let options = DivergenceOptions::new(d)
                    .with_support(support)
                    .with_temperature(tau)
                    .with_chunk_size(3);
                let ours = our_gradient(&zs, &zt, options, &weights);
                let fd = fd_gradient(&zs, &zt, d, support, tau, &weights);
                assert_close(
                    &format!("{d:?} {support:?} τ={tau}"),
                    &ours,
                    &fd,
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn precomputed_top_k_gradient_matches_finite_differences() {
    let zs = Mat::random(3, 9, 3.0, 5).rounded_to_f32();
    let zt = Mat::random(3, 9, 3.0, 6).rounded_to_f32();
    let k = 3;
    let mut ids = Vec::new();
    let mut lps = Vec::new();
    for r in 0..3 {
        let t = ref_log_softmax(zt.row(r), 1.0);
        for i in top_k_ids(&t, k) {
            ids.push(i as i64);
            lps.push(t[i] as f32 as f64);
        }
    }
    let lp = Mat {
        rows: 3,
        cols: k,
        data: lps,
    };
    for d in DIVERGENCES {
        let student = zs.tensor::<B>().require_grad();
        let teacher = TeacherTarget::TopK {
            ids: int_tensor::<B, 2>(ids.clone(), [3, k]),
            log_probs: lp.tensor::<B>(),
        };
        let value = divergence(student.clone(), teacher, DivergenceOptions::new(d)).unwrap();
        let grads = value.sum().backward();
        let ours = to_vec(student.grad(&grads).unwrap());
        let fd = fd_gradient(&zs, &zt, d, Support::TeacherTopK(k), 1.0, &[1.0; 3]);
        assert_close(
            &format!("{d:?} precomputed top-{k}"),
            &ours,
            &fd,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn teacher_receives_no_gradient() {
    let zs = Mat::random(3, 7, 2.0, 7);
    let zt = Mat::random(3, 7, 2.0, 8);
    let student = zs.tensor::<B>().require_grad();
    let teacher = zt.tensor::<B>().require_grad();
    let d = divergence(
        student.clone(),
        TeacherTarget::Logits(teacher.clone()),
        DivergenceOptions::new(Divergence::ReverseKl),
    )
    .unwrap();
    let grads = d.sum().backward();
    assert!(student.grad(&grads).is_some());
    assert!(
        teacher.grad(&grads).is_none(),
        "the teacher must be stop-gradient"
    );
}

#[test]
fn token_log_prob_gradient_is_onehot_minus_p() {
    let z = Mat::random(4, 6, 2.0, 9).rounded_to_f32();
    let ids = vec![0i64, 5, 2, 2];
    for tau in [1.0, 0.5] {
        for chunk in [1, 3, 8] {
            let logits = z.tensor::<B>().require_grad();
            let lp = token_log_probs(
                logits.clone(),
                int_tensor::<B, 1>(ids.clone(), [4]),
                tau,
                chunk,
            )
            .unwrap();
            let expected_values: Vec<f64> = (0..4)
                .map(|r| ref_log_softmax(z.row(r), tau)[ids[r] as usize])
                .collect();
            assert_close(
                "token log-probs",
                &to_vec(lp.clone()),
                &expected_values,
                1e-5,
                1e-5,
            );
            let grads = lp.sum().backward();
            let ours = to_vec(logits.grad(&grads).unwrap());
            let mut expected = Vec::new();
            for r in 0..4 {
                let s = ref_log_softmax(z.row(r), tau);
                expected.extend(
                    (0..6).map(|j| ((j == ids[r] as usize) as u8 as f64 - s[j].exp()) / tau),
                );
            }
            assert_close("token log-prob gradient", &ours, &expected, 1e-6, 1e-5);
        }
    }
}

#[test]
fn untracked_student_gives_plain_values() {
    let zs = Mat::random(2, 5, 1.0, 10);
    let zt = Mat::random(2, 5, 1.0, 11);
    let tracked = divergence(
        zs.tensor::<B>(),
        TeacherTarget::Logits(zt.tensor::<B>()),
        DivergenceOptions::new(Divergence::ForwardKl),
    )
    .unwrap();
    let plain = divergence(
        zs.tensor::<Plain>(),
        TeacherTarget::Logits(zt.tensor::<Plain>()),
        DivergenceOptions::new(Divergence::ForwardKl),
    )
    .unwrap();
    assert_close("values", &to_vec(tracked), &to_vec(plain), 0.0, 0.0);
    let _: Tensor<Plain, 1> = Tensor::zeros([1], &device());
}
