//! The output head fused with the divergences: values and gradients (to the hidden states and
//! to the head) against an f64 reference on the host checked by central differences, for every
//! divergence, the full and top-k supports, both temperatures, block sizes, selected rows, a
//! teacher given by logits or by its own hidden states and head, a head that trains or is
//! frozen, and the loss's weights told to the head rightly, wrongly or not; and the same values and gradients as the unfused loss through the public API, a
//! precomputed top-k teacher included.

// Rows, weights and logits are parallel arrays: indexing them together reads best.
#![allow(clippy::needless_range_loop)]

mod common;

use std::sync::Arc;

use burn::tensor::{Bool, Int, Tensor, TensorPrimitive};
use common::*;
use opd_divergences::{
    DistillationLoss, Divergence, DivergenceBackend, DivergenceError, DivergenceOptions,
    HeadOptions, Rows, Support, TeacherLogits, TeacherTarget,
};

const N: usize = 6;
const D: usize = 4;
/// The teacher's own width: another model's hidden states.
const DT: usize = 3;
const V: usize = 9;

/// `h·Wᵀ` of row `r`, in f64.
fn logits_row(h: &[f64], w: &[f64], width: usize, r: usize) -> Vec<f64> {
    (0..V)
        .map(|v| {
            (0..width)
                .map(|i| h[r * width + i] * w[v * width + i])
                .sum()
        })
        .collect()
}

/// The cases: (divergence, its reference, support, its reference).
fn cases() -> Vec<(Divergence, RefDiv, Support, RefSupport)> {
    let mut out = Vec::new();
    for (d, rd) in [
        (Divergence::ForwardKl, RefDiv::Fkl),
        (Divergence::ReverseKl, RefDiv::Rkl),
        (Divergence::jsd(0.3).unwrap(), RefDiv::Jsd(0.3)),
    ] {
        for (s, rs) in [
            (Support::Full, RefSupport::Full),
            (Support::TeacherTopK(3), RefSupport::TeacherTopK(3)),
            (Support::StudentTopK(3), RefSupport::StudentTopK(3)),
        ] {
            out.push((d, rd, s, rs));
        }
    }
    out
}

/// The fused op's values and, for `Σ_r w_r value_r`, its gradients to `h` and `W`.
#[allow(clippy::too_many_arguments)]
fn ours(
    h: &Mat,
    w: &Mat,
    teacher: &TeacherLogits<Plain>,
    rows: &Rows,
    options: DivergenceOptions,
    block_rows: usize,
    head_trains: bool,
    weights: &[f64],
    guess: Guess,
) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let hidden = h.tensor::<B>().require_grad();
    let head = match head_trains {
        true => w.tensor::<B>().require_grad(),
        false => w.tensor::<B>(),
    };
    let constant = |t: &burn::tensor::ops::FloatTensor<Plain>| {
        Tensor::<B, 2>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(t.clone())))
            .into_primitive()
            .tensor()
    };
    let teacher = match teacher {
        TeacherLogits::Logits(t) => TeacherLogits::Logits(constant(t)),
        TeacherLogits::Hidden { hidden, head } => TeacherLogits::Hidden {
            hidden: constant(hidden),
            head: constant(head),
        },
        TeacherLogits::TopK { .. } => unimplemented!("the reference covers computed teachers"),
    };
    let values = B::head_divergence_rows(
        hidden.clone().into_primitive().tensor(),
        head.clone().into_primitive().tensor(),
        &teacher,
        rows,
        options,
        block_rows,
        None,
        guess.weights(weights),
    );
    weighted_values_and_gradients(values, &hidden, &head, weights)
}

fn primitive(m: &Mat) -> burn::tensor::ops::FloatTensor<Plain> {
    m.tensor::<Plain>().into_primitive().tensor()
}

#[test]
fn fused_head_divergences_match_an_f64_reference() {
    let h = Mat::random(N, D, 1.0, 41).rounded_to_f32();
    let w = Mat::random(V, D, 1.5, 42).rounded_to_f32();
    let ht = Mat::random(N, DT, 1.0, 43).rounded_to_f32();
    let wt = Mat::random(V, DT, 1.5, 44).rounded_to_f32();
    let zt: Vec<Vec<f64>> = (0..N)
        .map(|r| logits_row(&ht.data, &wt.data, DT, r))
        .collect();
    let zt_mat = Mat {
        rows: N,
        cols: V,
        data: zt.concat(),
    }
    .rounded_to_f32();
    let teachers = [
        ("logits", TeacherLogits::Logits(primitive(&zt_mat))),
        (
            "hidden",
            TeacherLogits::Hidden {
                hidden: primitive(&ht),
                head: primitive(&wt),
            },
        ),
    ];
    let selections: [(Rows, Vec<usize>); 2] = [
        (Rows::All, (0..N).collect()),
        (Rows::Selected(Arc::from(vec![5, 0, 2])), vec![5, 0, 2]),
    ];
    for (divergence, rd, support, rs) in cases() {
        for tau in [1.0, 0.7] {
            let options = DivergenceOptions::new(divergence)
                .with_support(support)
                .with_temperature(tau);
            for (rows, listed) in &selections {
                let weights: Vec<f64> = (0..listed.len()).map(|i| 0.5 + 0.4 * i as f64).collect();
                let loss = |h: &[f64], w: &[f64]| -> f64 {
                    listed
                        .iter()
                        .zip(&weights)
                        .map(|(&r, &g)| g * reference(&logits_row(h, w, D, r), &zt[r], rd, rs, tau))
                        .sum()
                };
                let dh = finite_differences(&h.data, 1e-5, |x| loss(x, &w.data));
                let dw = finite_differences(&w.data, 1e-5, |x| loss(&h.data, x));
                let values: Vec<f64> = listed
                    .iter()
                    .map(|&r| reference(&logits_row(&h.data, &w.data, D, r), &zt[r], rd, rs, tau))
                    .collect();
                for (form, teacher) in &teachers {
                    for block_rows in [1, 4, 100] {
                        for (head_trains, guess) in [true, false]
                            .into_iter()
                            .flat_map(|t| Guess::ALL.map(|g| (t, g)))
                        {
                            let what = format!(
                                "{divergence:?} {support:?} τ {tau} rows {rows:?} teacher {form} \
                                 block {block_rows} W trains {head_trains} guess {guess:?}"
                            );
                            let (v, gh, gw) = ours(
                                &h,
                                &w,
                                teacher,
                                rows,
                                options,
                                block_rows,
                                head_trains,
                                &weights,
                                guess,
                            );
                            assert_close(&format!("values, {what}"), &v, &values, 1e-5, 1e-4);
                            assert_close(&format!("∂/∂h, {what}"), &gh, &dh, 1e-5, 1e-3);
                            match gw {
                                Some(gw) => {
                                    assert_close(&format!("∂/∂W, {what}"), &gw, &dw, 1e-5, 1e-3)
                                }
                                None => assert!(!head_trains, "a trained head learns: {what}"),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Values and gradients to `hidden` and `head` of a token-mean loss, fused or through the
/// formed logits.
fn loss_both_ways(
    loss: DistillationLoss,
    teacher: impl Fn() -> TeacherTarget<B, 3>,
    mask: Tensor<B, 2, Bool>,
) -> [(Vec<f64>, Vec<f64>, Vec<f64>); 2] {
    let h = Mat::random(N, D, 1.0, 51).tensor::<B>().reshape([2, 3, D]);
    let w = Mat::random(V, D, 1.0, 52).tensor::<B>();
    let run = |fused: bool| {
        let (hidden, head) = (h.clone().require_grad(), w.clone().require_grad());
        let out = match fused {
            true => loss.forward_from_hidden(hidden.clone(), head.clone(), teacher(), mask.clone()),
            false => loss.forward(
                hidden.clone().matmul(head.clone().transpose().unsqueeze()),
                teacher(),
                mask.clone(),
            ),
        }
        .unwrap();
        let grads = out.loss.backward();
        (
            to_vec(out.per_token),
            to_vec(hidden.grad(&grads).unwrap()),
            to_vec(head.grad(&grads).unwrap()),
        )
    };
    [run(true), run(false)]
}

/// Builds the teacher of a loss (the targets are moved into each evaluation).
type MakeTeacher = dyn Fn() -> TeacherTarget<B, 3>;

#[test]
fn fused_head_loss_equals_the_unfused_loss_for_every_teacher_form() {
    let mask = Tensor::<B, 2, Int>::from_ints([[1, 1, 0], [0, 1, 1]], &device()).bool();
    let zt = Mat::random(N, V, 2.0, 53).tensor::<B>().reshape([2, 3, V]);
    let ht = Mat::random(N, DT, 1.0, 54)
        .tensor::<B>()
        .reshape([2, 3, DT]);
    let wt = Mat::random(V, DT, 1.0, 55).tensor::<B>();
    let top_ids = int_tensor::<B, 3>(
        vec![0, 4, 8, 1, 2, 3, 5, 6, 7, 8, 7, 6, 2, 4, 6, 1, 3, 5],
        [2, 3, 3],
    );
    let top_log_probs = Tensor::<B, 3>::from_floats(
        [
            [[-0.5, -1.5, -2.5], [-1.0, -1.2, -3.0], [-0.7, -2.0, -2.2]],
            [[-0.9, -1.1, -2.9], [-0.4, -1.9, -3.3], [-1.3, -1.4, -1.6]],
        ],
        &device(),
    );
    let teachers: Vec<(&str, Box<MakeTeacher>)> = vec![
        (
            "logits",
            Box::new(move || TeacherTarget::Logits(zt.clone())),
        ),
        (
            "hidden",
            Box::new(move || TeacherTarget::Hidden {
                hidden: ht.clone(),
                head: wt.clone(),
            }),
        ),
        (
            "top-k",
            Box::new(move || TeacherTarget::TopK {
                ids: top_ids.clone(),
                log_probs: top_log_probs.clone(),
            }),
        ),
    ];
    for (form, teacher) in &teachers {
        for support in [Support::Full, Support::StudentTopK(2)] {
            let options = DivergenceOptions::new(Divergence::jsd(0.5).unwrap())
                .with_support(support)
                .with_temperature(0.8);
            let loss = DistillationLoss::new(options).with_token_clip(0.4);
            let [fused, formed] = loss_both_ways(loss, teacher, mask.clone());
            let what = format!("teacher {form}, {support:?}");
            assert_close(&format!("values, {what}"), &fused.0, &formed.0, 1e-6, 1e-5);
            assert_close(&format!("∂/∂h, {what}"), &fused.1, &formed.1, 1e-6, 1e-4);
            assert_close(&format!("∂/∂W, {what}"), &fused.2, &formed.2, 1e-6, 1e-4);
        }
    }
}

#[test]
fn fused_head_loss_checks_its_inputs() {
    let loss = DistillationLoss::new(DivergenceOptions::new(Divergence::ReverseKl));
    let hidden = Mat::random(N, D, 1.0, 61)
        .tensor::<Plain>()
        .reshape([2, 3, D]);
    let head = Mat::random(V, D, 1.0, 62).tensor::<Plain>();
    let mask = Tensor::<Plain, 2, Int>::ones([2, 3], &device()).bool();
    let teacher = |width: usize, vocab: usize| TeacherTarget::Hidden {
        hidden: Mat::random(N, width, 1.0, 63)
            .tensor::<Plain>()
            .reshape([2, 3, width]),
        head: Mat::random(vocab, width, 1.0, 64).tensor::<Plain>(),
    };
    let ok = loss.forward_from_hidden(hidden.clone(), head.clone(), teacher(DT, V), mask.clone());
    assert!(ok.is_ok(), "{:?}", ok.err());
    let narrow = Mat::random(V, D - 1, 1.0, 65).tensor::<Plain>();
    let e = loss
        .forward_from_hidden(hidden.clone(), narrow, teacher(DT, V), mask.clone())
        .unwrap_err();
    assert!(
        matches!(
            e,
            DivergenceError::ShapeMismatch {
                what: "output head",
                ..
            }
        ),
        "{e}"
    );
    // A teacher with another vocabulary.
    let e = loss
        .forward_from_hidden(
            hidden.clone(),
            head.clone(),
            teacher(DT, V + 1),
            mask.clone(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            DivergenceError::ShapeMismatch {
                what: "teacher output head",
                ..
            }
        ),
        "{e}"
    );
    let none = Tensor::<Plain, 2, Int>::zeros([2, 3], &device()).bool();
    let e = loss
        .forward_from_hidden(hidden.clone(), head.clone(), teacher(DT, V), none)
        .unwrap_err();
    assert!(matches!(e, DivergenceError::EmptyMask), "{e}");
    let mut nan = vec![0.5f32; N * D];
    nan[3] = f32::NAN;
    let nan = Tensor::<Plain, 1>::from_floats(nan.as_slice(), &device()).reshape([2, 3, D]);
    let e = loss
        .forward_from_hidden(nan, head, teacher(DT, V), mask)
        .unwrap_err();
    assert!(matches!(e, DivergenceError::NonFinite { .. }), "{e}");
}

#[test]
fn the_observer_sees_every_counted_position_once_with_both_models_logits() {
    let loss = DistillationLoss::new(DivergenceOptions::new(Divergence::ForwardKl));
    let hidden = Mat::random(N, D, 1.0, 71).tensor::<B>().reshape([2, 3, D]);
    let head = Mat::random(V, D, 1.0, 72).tensor::<B>();
    let (ht, wt) = (
        Mat::random(N, DT, 1.0, 73)
            .tensor::<B>()
            .reshape([2, 3, DT]),
        Mat::random(V, DT, 1.0, 74).tensor::<B>(),
    );
    let teacher = || TeacherTarget::Hidden {
        hidden: ht.clone(),
        head: wt.clone(),
    };
    let mask = Tensor::<B, 2, Int>::from_ints([[1, 0, 1], [1, 1, 0]], &device()).bool();
    let mut seen = Vec::new();
    let observed = loss
        .forward_from_hidden_with(
            hidden.clone(),
            head.clone(),
            teacher(),
            mask.clone(),
            HeadOptions {
                observe: Some(&mut |block| seen.push(block)),
                linear: None,
            },
        )
        .unwrap();
    let plain = loss
        .forward_from_hidden(hidden.clone(), head.clone(), teacher(), mask)
        .unwrap();
    assert_close(
        "values",
        &to_vec(observed.per_token),
        &to_vec(plain.per_token),
        0.0,
        0.0,
    );
    let positions: Vec<usize> = seen.iter().flat_map(|b| b.positions.clone()).collect();
    assert_eq!(
        positions,
        vec![0, 2, 3, 4],
        "the counted positions, once each, in order"
    );
    let student = hidden.reshape([N, D]).matmul(head.transpose());
    let formed = ht.reshape([N, DT]).matmul(wt.transpose());
    for block in &seen {
        let index = |rows: &[usize]| {
            int_tensor::<B, 1>(rows.iter().map(|&r| r as i64).collect(), [rows.len()])
        };
        let rows = index(&block.positions);
        let expected = student.clone().select(0, rows.clone());
        assert_close(
            "student block",
            &to_vec(block.student.clone()),
            &to_vec(expected),
            1e-6,
            1e-5,
        );
        let teacher = block.teacher.clone().expect("the teacher's logits");
        let expected = formed.clone().select(0, rows);
        assert_close(
            "teacher block",
            &to_vec(teacher),
            &to_vec(expected),
            1e-6,
            1e-5,
        );
    }
}
