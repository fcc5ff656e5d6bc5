//! Bad input gives a typed error, never a panic or a silent NaN; extreme logits stay finite.

// Rows, weights and ids are parallel arrays: indexing them together reads best.
#![allow(clippy::needless_range_loop)]

mod common;

use burn::tensor::{Bool, Tensor, TensorData};
use common::*;
use opd_divergences::{
    DistillationLoss, Divergence, DivergenceError, DivergenceOptions, Reduction, Support,
    TeacherTarget, divergence, reduce, token_log_probs,
};

fn options() -> DivergenceOptions {
    DivergenceOptions::new(Divergence::ReverseKl)
}

#[test]
fn teacher_with_another_vocabulary_is_a_shape_error() {
    let err = divergence(
        Mat::random(2, 5, 1.0, 1).tensor::<Plain>(),
        TeacherTarget::Logits(Mat::random(2, 6, 1.0, 2).tensor()),
        options(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DivergenceError::ShapeMismatch {
                what: "teacher logits",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("[2, 5]") && err.to_string().contains("[2, 6]"),
        "{err}"
    );
}

#[test]
fn precomputed_top_k_is_checked() {
    let student = Mat::random(2, 5, 1.0, 1).tensor::<Plain>();
    let bad_rows = TeacherTarget::TopK {
        ids: int_tensor(vec![0, 1, 2], [3, 1]),
        log_probs: Mat::random(3, 1, 1.0, 3).tensor(),
    };
    assert!(matches!(
        divergence(student.clone(), bad_rows, options()),
        Err(DivergenceError::ShapeMismatch { .. })
    ));
    let out_of_vocab = TeacherTarget::TopK {
        ids: int_tensor(vec![0, 7], [2, 1]),
        log_probs: Mat::random(2, 1, 1.0, 3).tensor(),
    };
    assert!(matches!(
        divergence(student.clone(), out_of_vocab, options()),
        Err(DivergenceError::InvalidParameter {
            name: "token id",
            ..
        })
    ));
    let nan = TeacherTarget::TopK {
        ids: int_tensor(vec![0, 1], [2, 1]),
        log_probs: Tensor::from_data(TensorData::new(vec![f32::NAN, -1.0], [2, 1]), &device()),
    };
    assert!(matches!(
        divergence(student, nan, options()),
        Err(DivergenceError::NonFinite { .. })
    ));
}

#[test]
fn nan_or_infinite_logits_are_reported_not_propagated() {
    let mut zs = Mat::random(4, 5, 1.0, 1);
    zs.data[7] = f64::NAN;
    let mut zt = Mat::random(4, 5, 1.0, 2);
    zt.data[16] = f64::INFINITY;
    let err = divergence(
        zs.tensor::<Plain>(),
        TeacherTarget::Logits(zt.tensor()),
        options(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        DivergenceError::NonFinite {
            what: "divergence",
            count: 2,
            total: 4,
            first: 1
        }
    );
}

#[test]
fn empty_inputs_and_masks_are_errors() {
    let empty = divergence(
        Tensor::<Plain, 2>::zeros([0, 5], &device()),
        TeacherTarget::Logits(Tensor::zeros([0, 5], &device())),
        options(),
    );
    assert!(matches!(empty, Err(DivergenceError::Empty { .. })));
    let student = Mat::random(2, 5, 1.0, 1)
        .tensor::<Plain>()
        .reshape([1, 2, 5]);
    let teacher = Mat::random(2, 5, 1.0, 2)
        .tensor::<Plain>()
        .reshape([1, 2, 5]);
    let none =
        Tensor::<Plain, 2, Bool>::from_data(TensorData::new(vec![false, false], [1, 2]), &device());
    assert_eq!(
        DistillationLoss::new(options())
            .forward(student, TeacherTarget::Logits(teacher), none.clone())
            .unwrap_err(),
        DivergenceError::EmptyMask
    );
    assert_eq!(
        reduce(
            Tensor::<Plain, 2>::zeros([1, 2], &device()),
            none,
            Reduction::TokenMean
        )
        .unwrap_err(),
        DivergenceError::EmptyMask
    );
}

#[test]
fn invalid_parameters_are_errors() {
    let zs = || Mat::random(2, 5, 1.0, 1).tensor::<Plain>();
    let zt = || TeacherTarget::Logits(Mat::random(2, 5, 1.0, 2).tensor::<Plain>());
    for bad in [
        options().with_temperature(0.0),
        options().with_temperature(f64::NAN),
        options().with_chunk_size(0),
        options().with_support(Support::TeacherTopK(0)),
        DivergenceOptions::new(Divergence::Jsd { beta: 1.5 }),
    ] {
        assert!(
            matches!(
                divergence(zs(), zt(), bad),
                Err(DivergenceError::InvalidParameter { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(Divergence::jsd(-0.1).is_err());
    let ids = int_tensor::<Plain, 1>(vec![0, 5], [2]);
    assert!(matches!(
        token_log_probs(zs(), ids, 1.0, 8),
        Err(DivergenceError::InvalidParameter {
            name: "token id",
            ..
        })
    ));
}

#[test]
fn padding_positions_are_never_evaluated() {
    // NaN logits at masked-out positions must not leak into the loss or its gradient.
    let mut zs = Mat::random(4, 6, 2.0, 5);
    zs.data[6..12].iter_mut().for_each(|x| *x = f64::NAN);
    let zt = Mat::random(4, 6, 2.0, 6);
    let student = zs.tensor::<B>().reshape([2, 2, 6]).require_grad();
    let mask = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(vec![true, false, true, true], [2, 2]),
        &device(),
    );
    let out = DistillationLoss::new(options())
        .forward(
            student.clone(),
            TeacherTarget::Logits(zt.tensor::<B>().reshape([2, 2, 6])),
            mask,
        )
        .unwrap();
    assert_eq!(out.tokens, 3);
    let grads = out.loss.backward();
    let g = to_vec(student.grad(&grads).unwrap());
    assert!(g.iter().all(|x| x.is_finite()));
    assert!(g[6..12].iter().all(|&x| x == 0.0));
}

#[test]
fn extreme_logits_at_large_vocabulary_stay_finite() {
    // Logits up to ±1e4 over V = 152k: no NaN, no inf, in values or gradients.
    let vocab = 151_936;
    let rows = 3;
    let mut zs = Mat::random(rows, vocab, 1e4, 11);
    let zt = Mat::random(rows, vocab, 1e4, 12);
    zs.data[5] = 1e4;
    zs.data[vocab + 9] = -1e4;
    for d in [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd { beta: 0.5 },
    ] {
        for support in [
            Support::Full,
            Support::TeacherTopK(64),
            Support::StudentTopK(64),
        ] {
            for tau in [1.0, 0.5] {
                let options = DivergenceOptions::new(d)
                    .with_support(support)
                    .with_temperature(tau)
                    .with_chunk_size(2);
                let (v, g) = values_and_gradient::<B>(&zs, &zt, options);
                assert!(
                    v.iter().all(|x| x.is_finite() && *x >= -1e-3),
                    "{d:?} {support:?}: {v:?}"
                );
                assert!(
                    g.iter().all(|x| x.is_finite()),
                    "{d:?} {support:?} gradient"
                );
            }
        }
    }
}
