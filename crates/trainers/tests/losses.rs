//! Every objective on a fixed small batch against values and gradients computed by hand in
//! float64, including the importance-ratio and clipping branches.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Bool, Tensor, TensorData};
use opd_divergences::{Counts, Reduction, reduce_share};
use opd_trainers::losses::{distill, grpo, opd, sft};

type A = Autodiff<Flex>;

const LP: [[f64; 3]; 2] = [[-0.5, -1.2, -2.0], [-0.1, -3.0, -0.7]];
const OLD: [[f64; 3]; 2] = [[-0.7, -1.0, -2.0], [-0.6, -2.5, -0.2]];
const TEACHER: [[f64; 3]; 2] = [[-0.2, -2.0, -1.0], [-0.3, -0.9, -4.0]];

fn tensor(values: [[f64; 3]; 2]) -> Tensor<A, 2> {
    let flat: Vec<f32> = values.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, [2, 3]), &Default::default())
}

fn host(t: Tensor<A, 2>) -> Vec<f64> {
    t.into_data().convert::<f64>().into_vec::<f64>().unwrap()
}

/// Per-token values and `∂(Σ values)/∂lp` of `f`.
fn value_and_grad(f: impl Fn(Tensor<A, 2>) -> Tensor<A, 2>) -> (Vec<f64>, Vec<f64>) {
    let lp = tensor(LP).require_grad();
    let values = f(lp.clone());
    let grads = values.clone().sum().backward();
    // No gradient at all (a detached output) reads as zeros.
    let grad = lp.grad(&grads).map_or(vec![0.0; 6], |g| {
        g.into_data().convert::<f64>().into_vec().unwrap()
    });
    (host(values), grad)
}

fn close(got: &[f64], want: &[f64], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() < 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn each(f: impl Fn(f64, f64, f64) -> f64) -> Vec<f64> {
    (0..6)
        .map(|i| f(LP[i / 3][i % 3], OLD[i / 3][i % 3], TEACHER[i / 3][i % 3]))
        .collect()
}

#[test]
fn sft_is_the_negative_log_likelihood() {
    let (v, g) = value_and_grad(sft::nll);
    close(&v, &each(|lp, _, _| -lp), "nll");
    close(&g, &[-1.0; 6], "∂nll");
}

#[test]
fn grpo_clipped_surrogate_takes_both_branches() {
    // Advantages of both signs; ρ = e^{lp − old} spans 0.61 .. 1.65.
    let adv = [[1.0, -1.0, 0.5], [2.0, -1.5, -0.5]];
    let (eps_low, eps_high) = (0.2, 0.28);
    let (v, g) = value_and_grad(|lp| {
        grpo::clipped_surrogate(lp, tensor(OLD), tensor(adv), eps_low, eps_high)
    });
    let a = |i: usize| adv[i / 3][i % 3];
    let mut want_v = Vec::new();
    let mut want_g = Vec::new();
    let mut clipped = 0;
    for i in 0..6 {
        let (lp, old) = (LP[i / 3][i % 3], OLD[i / 3][i % 3]);
        let rho = (lp - old).exp();
        let unclipped = rho * a(i);
        let clip = rho.clamp(1.0 - eps_low, 1.0 + eps_high) * a(i);
        want_v.push(-unclipped.min(clip));
        // The gradient flows only where the unclipped term is the minimum.
        if unclipped <= clip {
            want_g.push(-rho * a(i));
        } else {
            want_g.push(0.0);
            clipped += 1;
        }
    }
    assert!(
        clipped >= 2,
        "the batch exercises the clipped branch ({clipped} tokens)"
    );
    close(&v, &want_v, "surrogate");
    close(&g, &want_g, "∂surrogate");
}

#[test]
fn grpo_k3_to_the_reference_is_non_negative_with_its_closed_form_gradient() {
    let (v, g) = value_and_grad(|lp| grpo::k3_to_reference(lp, tensor(TEACHER)));
    close(&v, &each(|lp, _, r| (r - lp).exp() - (r - lp) - 1.0), "k3");
    close(&g, &each(|lp, _, r| 1.0 - (r - lp).exp()), "∂k3");
    assert!(v.iter().all(|&x| x >= 0.0));
}

#[test]
fn group_advantages_match_hand_values() {
    let rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5];
    let scaled = grpo::group_advantages(&rewards, 4, true);
    // Group 1: mean 0.5, unbiased std sqrt(1/3).
    let std = (1.0f64 / 3.0).sqrt();
    let want = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)];
    close(&scaled.advantages[..2], &want, "scaled");
    assert_eq!(&scaled.advantages[4..], &[0.0; 4]);
    assert_eq!((scaled.zero_std_groups, scaled.groups), (1, 2));
    let dr = grpo::group_advantages(&rewards, 4, false);
    assert_eq!(&dr.advantages[..4], &[0.5, -0.5, -0.5, 0.5]);
}

#[test]
fn opd_surrogate_is_the_importance_weighted_reverse_kl_plus_the_trust_region() {
    let beta = 0.3;
    let (v, g) = value_and_grad(|lp| opd::surrogate(lp, tensor(OLD), tensor(TEACHER), beta));
    close(
        &v,
        &each(|lp, old, t| {
            let rho = (lp - old).exp();
            rho * (lp - t) + beta * (rho - 1.0 - (lp - old))
        }),
        "opd",
    );
    // ∂/∂lp: ρ(lp − t) + ρ + β(ρ − 1).
    close(
        &g,
        &each(|lp, old, t| {
            let rho = (lp - old).exp();
            rho * (lp - t) + rho + beta * (rho - 1.0)
        }),
        "∂opd",
    );
}

#[test]
fn opd_trust_region_vanishes_on_policy() {
    let (v, g) = value_and_grad(|lp| {
        opd::surrogate(lp.clone(), lp.clone().detach(), tensor(TEACHER), 5.0)
            - opd::surrogate(lp.clone(), lp.clone().detach(), tensor(TEACHER), 0.0)
    });
    close(&v, &[0.0; 6], "trust region at ρ = 1");
    close(&g, &[0.0; 6], "its gradient at ρ = 1");
}

#[test]
fn opd_advantages_discount_later_tokens() {
    let old = [-1.0f32, -2.0, -0.5];
    let teacher = [-0.5f32, -1.0, -1.5];
    // Per-token terms 0.5, 1.0, −1.0.
    close(
        &opd::advantages(&old, &teacher, 0.0),
        &[0.5, 1.0, -1.0],
        "γ = 0",
    );
    close(
        &opd::advantages(&old, &teacher, 0.5),
        &[0.5 + 0.5 * (1.0 - 0.5), 1.0 - 0.5, -1.0],
        "γ = 0.5",
    );
}

#[test]
fn importance_weighted_pg_has_gradient_minus_rho_a() {
    let adv = [[0.5, -1.0, 2.0], [1.0, 0.0, -0.3]];
    let (v, g) = value_and_grad(|lp| opd::importance_weighted(lp, tensor(OLD), tensor(adv)));
    let a = |i: usize| adv[i / 3][i % 3];
    let want: Vec<f64> = (0..6)
        .map(|i| -(LP[i / 3][i % 3] - OLD[i / 3][i % 3]).exp() * a(i))
        .collect();
    close(&v, &want, "−ρA");
    close(&g, &want, "∂(−ρA) = −ρA");
}

#[test]
fn sampled_token_distillation_is_reinforce_with_the_teacher_advantage() {
    let (v, g) = value_and_grad(|lp| distill::sampled_token(lp, tensor(TEACHER)));
    close(&v, &each(|lp, _, t| -(t - lp) * lp), "−A·lp");
    close(&g, &each(|lp, _, t| -(t - lp)), "∂ = −A (A detached)");
}

#[test]
fn sdpo_importance_weight_is_detached_and_capped() {
    let (v, g) = value_and_grad(|lp| distill::clipped_importance_weight(lp, tensor(OLD), 1.2));
    close(
        &v,
        &each(|lp, old, _| (lp - old).exp().min(1.2)),
        "min(ρ, 1.2)",
    );
    close(&g, &[0.0; 6], "no gradient through the weight");
}

fn mask() -> Tensor<A, 2, Bool> {
    Tensor::from_data(
        TensorData::new(vec![true, true, false, true, false, false], [2, 3]),
        &Default::default(),
    )
}

#[test]
fn aggregations_match_hand_values_and_add_up_over_micro_batches() {
    let values = tensor(LP);
    let norm = Counts {
        tokens: 3,
        sequences: 2,
    };
    let scalar = |how| reduce_share(values.clone(), mask(), how, norm).into_scalar() as f64;
    close(
        &[scalar(Reduction::TokenMean)],
        &[(-0.5 - 1.2 - 0.1) / 3.0],
        "token mean",
    );
    close(
        &[scalar(Reduction::SequenceMean)],
        &[((-0.5 - 1.2) / 2.0 + -0.1) / 2.0],
        "sequence mean",
    );
    close(
        &[scalar(Reduction::Constant(4))],
        &[(-0.5 - 1.2 - 0.1) / 8.0],
        "constant",
    );
    // Rows aggregated one at a time with the whole batch's normalizer add up to the whole.
    for how in [
        Reduction::TokenMean,
        Reduction::SequenceMean,
        Reduction::Constant(4),
    ] {
        let parts: f64 = (0..2)
            .map(|r| {
                reduce_share(
                    values.clone().narrow(0, r, 1),
                    mask().narrow(0, r, 1),
                    how,
                    norm,
                )
                .into_scalar() as f64
            })
            .sum();
        close(&[parts], &[scalar(how)], "micro-batches");
    }
    // NaN off the mask never leaks in.
    let with_nan = values.clone().mask_fill(mask().bool_not(), f32::NAN);
    assert!(
        reduce_share(with_nan, mask(), Reduction::TokenMean, norm)
            .into_scalar()
            .is_finite()
    );
}

#[test]
fn opd_trust_region_estimators_follow_their_closed_forms() {
    use opd_divergences::sampled::Estimator;
    // log r = lp − old: k1 = −log r, k2 = (log r)²/2, k3 = r − 1 − log r.
    // (estimator, value, ∂value/∂lp) as functions of log r.
    type Closed = fn(f64) -> f64;
    let cases: [(Estimator, Closed, Closed); 3] = [
        (Estimator::K1, |l| -l, |_| -1.0),
        (Estimator::K2, |l| 0.5 * l * l, |l| l),
        (Estimator::K3, |l| l.exp() - 1.0 - l, |l| l.exp() - 1.0),
    ];
    for (estimator, value, grad) in cases {
        let (v, g) = value_and_grad(|lp| opd::trust_region(lp, tensor(OLD), estimator));
        close(&v, &each(|lp, old, _| value(lp - old)), "trust region");
        close(&g, &each(|lp, old, _| grad(lp - old)), "∂trust region");
    }
}

#[test]
fn the_sampled_token_loss_against_pi_old_uses_pi_olds_log_prob_as_its_baseline() {
    // ℓ = −sg(t − old) · lp: value −(t − old)·lp, gradient −(t − old).
    let (v, g) =
        value_and_grad(|lp| distill::sampled_token_against(lp, tensor(TEACHER), tensor(OLD)));
    close(
        &v,
        &each(|lp, old, t| -(t - old) * lp),
        "sampled token vs π_old",
    );
    close(&g, &each(|_, old, t| -(t - old)), "∂sampled token vs π_old");
    // Against the current policy it is the sampled-token loss.
    let (a, ga) =
        value_and_grad(|lp| distill::sampled_token_against(lp.clone(), tensor(TEACHER), lp));
    let (b, gb) = value_and_grad(|lp| distill::sampled_token(lp, tensor(TEACHER)));
    close(&a, &b, "current baseline");
    close(&ga, &gb, "∂current baseline");
}
