//! Backend parity: the same divergences, values and gradients, on wgpu and on flex.
//! Run with `cargo test -p opd-divergences --features wgpu --test wgpu_parity`.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{Autodiff, Wgpu};
use common::*;
use opd_divergences::{Divergence, DivergenceOptions, Support, token_log_probs};

type G = Autodiff<Wgpu>;

#[test]
fn divergences_match_flex_on_wgpu() {
    let zs = Mat::random(9, 257, 4.0, 1);
    let zt = Mat::random(9, 257, 4.0, 2);
    for d in [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd { beta: 0.5 },
    ] {
        for support in [
            Support::Full,
            Support::TeacherTopK(16),
            Support::StudentTopK(16),
        ] {
            let options = DivergenceOptions::new(d)
                .with_support(support)
                .with_temperature(0.8)
                .with_chunk_size(4);
            let (v_flex, g_flex) = values_and_gradient::<B>(&zs, &zt, options);
            let (v_gpu, g_gpu) = values_and_gradient::<G>(&zs, &zt, options);
            assert_close(
                &format!("{d:?} {support:?} values"),
                &v_gpu,
                &v_flex,
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("{d:?} {support:?} gradients"),
                &g_gpu,
                &g_flex,
                1e-6,
                1e-4,
            );
        }
    }
}

#[test]
fn token_log_probs_match_flex_on_wgpu() {
    let z = Mat::random(5, 100, 3.0, 3);
    let ids = vec![0i64, 99, 50, 7, 7];
    let flex = token_log_probs(
        z.tensor::<B>(),
        int_tensor::<B, 1>(ids.clone(), [5]),
        1.0,
        2,
    )
    .unwrap();
    let gpu = token_log_probs(z.tensor::<G>(), int_tensor::<G, 1>(ids, [5]), 1.0, 2).unwrap();
    assert_close("token log-probs", &to_vec(gpu), &to_vec(flex), 1e-5, 1e-5);
}

/// The fused head's values and gradients (to the hidden states and to a head that trains), on
/// one backend; with `linear`, the head told the loss's weights (the gradients formed in the
/// forward).
fn fused_head<BK: burn::tensor::backend::AutodiffBackend + opd_divergences::DivergenceBackend>(
    h: &Mat,
    w: &Mat,
    ids: &[i64],
    mask: [[i64; 4]; 3],
    linear: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    use opd_divergences::HeadOptions;
    use opd_divergences::sampled::sequence_log_probs_from_hidden_with;
    let device = Default::default();
    let hidden = h.tensor::<BK>().reshape([3, 4, h.cols]).require_grad();
    let head = w.tensor::<BK>().require_grad();
    let mask = burn::tensor::Tensor::<BK, 2, burn::tensor::Int>::from_ints(mask, &device).bool();
    let options = HeadOptions {
        observe: None,
        linear: linear.then(|| mask.clone().float()),
    };
    let lp = sequence_log_probs_from_hidden_with(
        hidden.clone(),
        head.clone(),
        int_tensor::<BK, 2>(ids.to_vec(), [3, 4]),
        mask,
        0.9,
        options,
    )
    .unwrap();
    let grads = lp.clone().sum().backward();
    (
        to_vec(lp),
        to_vec(hidden.grad(&grads).unwrap()),
        to_vec(head.grad(&grads).unwrap()),
    )
}

#[test]
fn fused_head_matches_flex_on_wgpu() {
    let h = Mat::random(12, 16, 1.0, 5);
    let w = Mat::random(300, 16, 1.0, 6);
    let ids = [0, 299, 5, 7, 8, 150, 2, 2, 9, 10, 11, 12];
    let mask = [[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]];
    let flex = fused_head::<B>(&h, &w, &ids, mask, false);
    for linear in [false, true] {
        let gpu = fused_head::<G>(&h, &w, &ids, mask, linear);
        assert_close("fused head values", &gpu.0, &flex.0, 1e-5, 1e-4);
        assert_close(
            &format!("fused head ∂/∂h, linear {linear}"),
            &gpu.1,
            &flex.1,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("fused head ∂/∂W, linear {linear}"),
            &gpu.2,
            &flex.2,
            1e-5,
            1e-4,
        );
    }
}

/// The fused head's JSD to a teacher given by its hidden states: values and gradients (to the
/// hidden states and to a head that trains) of the token mean, on one backend; with `linear`,
/// the head told the mean's weights.
fn fused_head_divergence<BK>(
    h: &Mat,
    w: &Mat,
    ht: &Mat,
    wt: &Mat,
    linear: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>)
where
    BK: burn::tensor::backend::AutodiffBackend + opd_divergences::DivergenceBackend,
{
    use opd_divergences::{DistillationLoss, HeadOptions, TeacherTarget};
    let device = Default::default();
    let hidden = h.tensor::<BK>().reshape([3, 4, h.cols]).require_grad();
    let head = w.tensor::<BK>().require_grad();
    let teacher = TeacherTarget::Hidden {
        hidden: ht.tensor::<BK>().reshape([3, 4, ht.cols]),
        head: wt.tensor::<BK>(),
    };
    let mask = [[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]];
    let mask = burn::tensor::Tensor::<BK, 2, burn::tensor::Int>::from_ints(mask, &device).bool();
    let options = DivergenceOptions::new(Divergence::Jsd { beta: 0.5 }).with_temperature(0.9);
    let head_options = HeadOptions {
        observe: None,
        linear: linear.then(|| mask.clone().float()),
    };
    let out = DistillationLoss::new(options)
        .forward_from_hidden_with(hidden.clone(), head.clone(), teacher, mask, head_options)
        .unwrap();
    let grads = out.loss.backward();
    (
        to_vec(out.per_token),
        to_vec(hidden.grad(&grads).unwrap()),
        to_vec(head.grad(&grads).unwrap()),
    )
}

#[test]
fn fused_head_divergence_matches_flex_on_wgpu() {
    let (h, w) = (Mat::random(12, 16, 1.0, 7), Mat::random(300, 16, 1.0, 8));
    let (ht, wt) = (Mat::random(12, 8, 1.0, 9), Mat::random(300, 8, 1.0, 10));
    let flex = fused_head_divergence::<B>(&h, &w, &ht, &wt, false);
    for linear in [false, true] {
        let gpu = fused_head_divergence::<G>(&h, &w, &ht, &wt, linear);
        let what = |part: &str| format!("fused head JSD {part}, linear {linear}");
        assert_close(&what("values"), &gpu.0, &flex.0, 1e-5, 1e-4);
        assert_close(&what("∂/∂h"), &gpu.1, &flex.1, 1e-5, 1e-4);
        assert_close(&what("∂/∂W"), &gpu.2, &flex.2, 1e-5, 1e-4);
    }
}

#[test]
fn row_summaries_match_flex_on_wgpu() {
    let z = Mat::random(6, 301, 6.0, 11).rounded_to_f32();
    let flex = opd_divergences::summarize(z.tensor::<B>(), 0.8, 8);
    let gpu = opd_divergences::summarize(z.tensor::<G>(), 0.8, 8);
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert_close("entropy", &f(&gpu.entropy), &f(&flex.entropy), 1e-5, 1e-4);
    assert_eq!(gpu.ids, flex.ids, "top-k ids");
    assert_close(
        "top-k log p",
        &f(&gpu.log_probs),
        &f(&flex.log_probs),
        1e-5,
        1e-4,
    );
}
