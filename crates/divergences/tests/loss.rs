//! The sequence loss: masks, per-token clipping and reductions.

// Rows, weights and ids are parallel arrays: indexing them together reads best.
#![allow(clippy::needless_range_loop)]

mod common;

use burn::tensor::{Bool, Tensor, TensorData};
use common::*;
use opd_divergences::{
    DistillationLoss, Divergence, DivergenceOptions, Reduction, TeacherTarget, divergence,
};

fn setup() -> (Mat, Mat, Tensor<B, 2, Bool>) {
    let zs = Mat::random(6, 7, 3.0, 51);
    let zt = Mat::random(6, 7, 3.0, 52);
    let mask = Tensor::from_data(
        TensorData::new(vec![true, true, true, true, false, false], [2, 3]),
        &device(),
    );
    (zs, zt, mask)
}

fn per_row(zs: &Mat, zt: &Mat) -> Vec<f64> {
    to_vec(
        divergence(
            zs.tensor::<Plain>(),
            TeacherTarget::Logits(zt.tensor()),
            DivergenceOptions::new(Divergence::ReverseKl),
        )
        .unwrap(),
    )
}

fn loss(zs: &Mat, zt: &Mat, mask: Tensor<B, 2, Bool>, l: DistillationLoss) -> (f64, Vec<f64>) {
    let student = zs.tensor::<B>().reshape([2, 3, 7]).require_grad();
    let out = l
        .forward(
            student.clone(),
            TeacherTarget::Logits(zt.tensor::<B>().reshape([2, 3, 7])),
            mask,
        )
        .unwrap();
    let value = to_vec(out.loss.clone())[0];
    let grads = out.loss.backward();
    (value, to_vec(student.grad(&grads).unwrap()))
}

#[test]
fn reductions_follow_their_formulas() {
    let (zs, zt, mask) = setup();
    let d = per_row(&zs, &zt);
    let base = DistillationLoss::new(DivergenceOptions::new(Divergence::ReverseKl));
    let token_mean = (d[0] + d[1] + d[2] + d[3]) / 4.0;
    let sequence_mean = ((d[0] + d[1] + d[2]) / 3.0 + d[3]) / 2.0;
    let sum = d[0] + d[1] + d[2] + d[3];
    // Dr. GRPO's constant: the sum over 2 sequences of a nominal 5 tokens each.
    let constant = sum / (2.0 * 5.0);
    for (reduction, expected) in [
        (Reduction::TokenMean, token_mean),
        (Reduction::SequenceMean, sequence_mean),
        (Reduction::Sum, sum),
        (Reduction::Constant(5), constant),
    ] {
        let (value, _) = loss(&zs, &zt, mask.clone(), base.with_reduction(reduction));
        assert!(
            (value - expected).abs() < 1e-5,
            "{reduction:?}: {value} vs {expected}"
        );
    }
}

#[test]
fn clipped_tokens_get_no_gradient() {
    let (zs, zt, mask) = setup();
    let d = per_row(&zs, &zt);
    let mut sorted = d[..4].to_vec();
    sorted.sort_by(f64::total_cmp);
    let clip = (sorted[1] + sorted[2]) / 2.0; // two tokens above, two below
    let (value, grad) = loss(
        &zs,
        &zt,
        mask,
        DistillationLoss::new(DivergenceOptions::new(Divergence::ReverseKl)).with_token_clip(clip),
    );
    let expected: f64 = d[..4].iter().map(|x| x.min(clip)).sum::<f64>() / 4.0;
    assert!((value - expected).abs() < 1e-5);
    for (row, &v) in d[..4].iter().enumerate() {
        let g = &grad[row * 7..(row + 1) * 7];
        let norm: f64 = g.iter().map(|x| x * x).sum();
        assert_eq!(
            norm == 0.0,
            v > clip,
            "row {row}: value {v}, clip {clip}, |g|² {norm}"
        );
    }
}

#[test]
fn masked_and_full_masks_agree_on_the_selected_tokens() {
    let (zs, zt, _) = setup();
    let all = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; 6], [2, 3]), &device());
    let (value, _) = loss(
        &zs,
        &zt,
        all,
        DistillationLoss::new(DivergenceOptions::new(Divergence::ReverseKl))
            .with_reduction(Reduction::Sum),
    );
    let d = per_row(&zs, &zt);
    assert!((value - d.iter().sum::<f64>()).abs() < 1e-5);
}

/// A served teacher's top-k is checked on the counted positions only: padding may hold ids
/// outside the vocabulary and −∞ log-probs, and the loss is that of clean padding.
#[test]
fn a_top_k_teacher_may_hold_anything_at_padding() {
    let (zs, zt, mask) = setup();
    let k = 3;
    let mut ids = Vec::new();
    let mut log_probs = Vec::new();
    for r in 0..6 {
        let row = ref_log_softmax(zt.row(r), 1.0);
        for id in top_k_ids(zt.row(r), k) {
            ids.push(id as i64);
            log_probs.push(row[id] as f32);
        }
    }
    let teacher = |ids: Vec<i64>, log_probs: Vec<f32>| TeacherTarget::TopK {
        ids: int_tensor::<B, 3>(ids, [2, 3, k]),
        log_probs: Tensor::from_data(TensorData::new(log_probs, [2, 3, k]), &device()),
    };
    let l = DistillationLoss::new(DivergenceOptions::new(Divergence::ReverseKl));
    let student = || zs.tensor::<B>().reshape([2, 3, 7]);
    let clean = l
        .forward(
            student(),
            teacher(ids.clone(), log_probs.clone()),
            mask.clone(),
        )
        .unwrap();
    // Positions 4 and 5 (row 1, t = 1, 2) are padding.
    let (mut bad_ids, mut bad_lps) = (ids.clone(), log_probs.clone());
    for j in 4 * k..6 * k {
        bad_ids[j] = 1_000;
        bad_lps[j] = f32::NEG_INFINITY;
    }
    let padded = l
        .forward(
            student(),
            teacher(bad_ids.clone(), bad_lps.clone()),
            mask.clone(),
        )
        .unwrap();
    assert_eq!(to_vec(clean.loss), to_vec(padded.loss));
    // On a counted position the same values are errors.
    let all = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; 6], [2, 3]), &device());
    let err = l
        .forward(student(), teacher(bad_ids, log_probs), all.clone())
        .unwrap_err();
    assert!(err.to_string().contains("token id"), "{err}");
    let err = l
        .forward(student(), teacher(ids, bad_lps), all)
        .unwrap_err();
    assert!(
        matches!(
            err,
            opd_divergences::DivergenceError::NonFinite { count: 6, .. }
        ),
        "{err}"
    );
}
