//! Sampled-token estimators, the OPD advantage and its REINFORCE surrogate.

// Rows, weights and ids are parallel arrays: indexing them together reads best.
#![allow(clippy::needless_range_loop)]

mod common;

use burn::tensor::{Bool, Tensor, TensorData};
use common::*;
use opd_divergences::sampled::{
    Estimator, SampledObjective, SampledTokenLoss, reinforce_surrogate, sequence_log_probs,
    token_advantage,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn sample(logp: &[f64], rng: &mut StdRng) -> usize {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (i, lp) in logp.iter().enumerate() {
        acc += lp.exp();
        if u < acc {
            return i;
        }
    }
    logp.len() - 1
}

#[test]
fn monte_carlo_means_of_k1_and_k3_approach_the_reverse_kl_and_k2_is_biased() {
    let zs = Mat::random(1, 12, 2.0, 21);
    let zt = Mat::random(1, 12, 2.0, 22);
    let s = ref_log_softmax(zs.row(0), 1.0);
    let t = ref_log_softmax(zt.row(0), 1.0);
    let kl = reference(zs.row(0), zt.row(0), RefDiv::Rkl, RefSupport::Full, 1.0);
    let n = 20_000;
    let mut rng = StdRng::seed_from_u64(7);
    let ids: Vec<usize> = (0..n).map(|_| sample(&s, &mut rng)).collect();
    let to = |v: Vec<f64>| {
        Mat {
            rows: 1,
            cols: n,
            data: v,
        }
        .tensor::<Plain>()
    };
    let student = to(ids.iter().map(|&i| s[i]).collect());
    let teacher = to(ids.iter().map(|&i| t[i]).collect());
    let mean = |e: Estimator| to_vec(e.estimate(student.clone(), teacher.clone()).mean())[0];
    let (k1, k2, k3) = (
        mean(Estimator::K1),
        mean(Estimator::K2),
        mean(Estimator::K3),
    );
    // Standard error of k1 here is ~0.01 (sd ≈ 1.4 over 20k samples): 4 sigma.
    assert!((k1 - kl).abs() < 0.04, "k1 mean {k1} vs KL {kl}");
    assert!((k3 - kl).abs() < 0.04, "k3 mean {k3} vs KL {kl}");
    assert!(
        (k2 - kl).abs() > 0.05,
        "k2 should be biased here: {k2} vs KL {kl}"
    );
    let k3_min = to_vec(
        Estimator::K3
            .estimate(student.clone(), teacher.clone())
            .min(),
    )[0];
    assert!(k3_min >= 0.0, "k3 is non-negative");
}

#[test]
fn reinforce_gradient_is_the_reverse_kl_gradient_in_expectation() {
    // E_{ŷ~p_S}[−A ∇_z log p_S(ŷ)] = ∇_z KL(p_S‖p_T), with A = log p_T − log p_S.
    let zs = Mat::random(1, 6, 1.5, 31).rounded_to_f32();
    let zt = Mat::random(1, 6, 1.5, 32).rounded_to_f32();
    let s = ref_log_softmax(zs.row(0), 1.0);
    let n = 20_000;
    let mut rng = StdRng::seed_from_u64(3);
    let ids: Vec<i64> = (0..n).map(|_| sample(&s, &mut rng) as i64).collect();
    let repeat = |m: &Mat| Mat {
        rows: n,
        cols: 6,
        data: m.data.repeat(n),
    };
    let logits = repeat(&zs).tensor::<B>().require_grad();
    let ids_t = int_tensor::<B, 1>(ids, [n]);
    let student_lp =
        opd_divergences::token_log_probs(logits.clone(), ids_t.clone(), 1.0, 4096).unwrap();
    let teacher_lp =
        opd_divergences::token_log_probs(repeat(&zt).tensor::<B>(), ids_t, 1.0, 4096).unwrap();
    let advantage = token_advantage(student_lp.clone(), teacher_lp);
    let grads = reinforce_surrogate(student_lp, advantage).mean().backward();
    let g = to_vec(logits.grad(&grads).unwrap().sum_dim(0));
    let expected = finite_differences(zs.row(0), 1e-5, |z| {
        reference(z, zt.row(0), RefDiv::Rkl, RefSupport::Full, 1.0)
    });
    assert_close("REINFORCE vs ∇KL", &g, &expected, 0.03, 0.0);
}

#[test]
fn sampled_token_loss_masks_padding_and_reports_k3() {
    let device = device();
    let student = Tensor::<B, 2>::from_data(
        TensorData::new(vec![-1.0f32, -2.0, f32::NAN, -0.5, -0.1, -3.0], [2, 3]),
        &device,
    )
    .require_grad();
    let teacher = Tensor::<B, 2>::from_data(
        TensorData::new(vec![-1.5f32, -1.0, f32::NAN, -0.5, -2.1, 0.0], [2, 3]),
        &device,
    );
    let mask = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(vec![true, true, false, true, true, false], [2, 3]),
        &device,
    );
    let out = SampledTokenLoss::new(SampledObjective::Reinforce)
        .forward(student.clone(), teacher, mask)
        .unwrap();
    assert_eq!(out.tokens, 4);
    // loss = mean over 4 tokens of −A·s, A = t − s: gradient w.r.t. s is −A / 4.
    let grads = out.loss.backward();
    let g = to_vec(student.grad(&grads).unwrap());
    assert_close(
        "gradient",
        &g,
        &[0.5 / 4.0, -1.0 / 4.0, 0.0, 0.0, 2.0 / 4.0, 0.0],
        1e-6,
        1e-6,
    );
    let k3 = to_vec(out.per_token);
    let r: f64 = -1.0 - -1.5;
    assert_close("k3", &k3[..1], &[(-r).exp() - 1.0 + r], 1e-6, 1e-5);
    assert_eq!(k3[2], 0.0);
}

#[test]
fn sequence_log_probs_read_exactly_the_sampled_tokens() {
    let z = Mat::random(6, 5, 2.0, 41).rounded_to_f32();
    let logits = z.tensor::<B>().reshape([2, 3, 5]).require_grad();
    let ids = int_tensor::<B, 2>(vec![4, 0, 1, 2, 3, 3], [2, 3]);
    let mask = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(vec![false, true, true, true, true, false], [2, 3]),
        &device(),
    );
    let lp = to_vec(sequence_log_probs(logits, ids, mask, 1.0, 2).unwrap());
    let expect = |r: usize, id: usize| ref_log_softmax(z.row(r), 1.0)[id];
    assert_close(
        "log-probs",
        &lp,
        &[
            0.0,
            expect(1, 0),
            expect(2, 1),
            expect(3, 2),
            expect(4, 3),
            0.0,
        ],
        1e-6,
        1e-5,
    );
}
