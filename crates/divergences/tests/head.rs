//! The output head fused with the token log-probability: values and gradients (to the hidden
//! states and to the head) against an f64 reference on the host whose gradient is checked by
//! central differences, for every block size, selected rows, both temperatures, a head that
//! trains or is frozen, and the loss's weights told to the head rightly, wrongly or not; and the same values as the unfused path through the public API.

// Rows, ids and weights are parallel arrays: indexing them together reads best.
#![allow(clippy::needless_range_loop)]

mod common;

use std::sync::Arc;

use burn::tensor::Tensor;
use common::*;
use opd_divergences::sampled::{
    sequence_log_probs, sequence_log_probs_from_hidden, sequence_log_probs_from_hidden_with,
};
use opd_divergences::{DivergenceBackend, DivergenceError, HeadOptions, Rows};

const N: usize = 7;
const D: usize = 5;
const V: usize = 11;
const IDS: [i64; N] = [0, 10, 3, 3, 7, 1, 9];

/// `Σ_r w_r log softmax(h_r·Wᵀ / τ)[id_r]` over `rows`, in f64.
fn reference_loss(h: &[f64], w: &[f64], rows: &[usize], weights: &[f64], tau: f64) -> f64 {
    rows.iter()
        .zip(weights)
        .map(|(&r, &g)| {
            let z: Vec<f64> = (0..V)
                .map(|v| (0..D).map(|i| h[r * D + i] * w[v * D + i]).sum())
                .collect();
            g * ref_log_softmax(&z, tau)[IDS[r] as usize]
        })
        .sum()
}

/// The op's values and, for the loss `Σ_r w_r value_r`, its gradients to `h` and `W`.
#[allow(clippy::too_many_arguments)]
fn ours(
    h: &Mat,
    w: &Mat,
    rows: &Rows,
    tau: f64,
    block_rows: usize,
    head_trains: bool,
    weights: &[f64],
    guess: Guess,
) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let hidden = h.tensor::<B>().require_grad();
    let head = if head_trains {
        w.tensor::<B>().require_grad()
    } else {
        w.tensor::<B>()
    };
    let ids = int_tensor::<B, 1>(IDS.to_vec(), [N]);
    let values = B::head_token_log_probs(
        hidden.clone().into_primitive().tensor(),
        head.clone().into_primitive().tensor(),
        ids.into_primitive(),
        rows,
        tau,
        block_rows,
        None,
        guess.weights(weights),
    );
    weighted_values_and_gradients(values, &hidden, &head, weights)
}

#[test]
fn fused_head_values_and_gradients_match_an_f64_reference() {
    let h = Mat::random(N, D, 1.0, 21).rounded_to_f32();
    let w = Mat::random(V, D, 1.5, 22).rounded_to_f32();
    let selections: [(Rows, Vec<usize>); 2] = [
        (Rows::All, (0..N).collect()),
        (
            Rows::Selected(Arc::from(vec![6, 0, 2, 3])),
            vec![6, 0, 2, 3],
        ),
    ];
    for (rows, listed) in &selections {
        let weights: Vec<f64> = (0..listed.len()).map(|i| 0.5 + 0.3 * i as f64).collect();
        for tau in [1.0, 0.7] {
            let f_h = |x: &[f64]| reference_loss(x, &w.data, listed, &weights, tau);
            let f_w = |x: &[f64]| reference_loss(&h.data, x, listed, &weights, tau);
            let dh = finite_differences(&h.data, 1e-5, f_h);
            let dw = finite_differences(&w.data, 1e-5, f_w);
            let values: Vec<f64> = listed
                .iter()
                .map(|&r| {
                    let one = [1.0];
                    reference_loss(&h.data, &w.data, &[r], &one, tau)
                })
                .collect();
            // Every row not listed takes no gradient.
            for block_rows in [1, 3, N, 100] {
                for (head_trains, guess) in [true, false]
                    .into_iter()
                    .flat_map(|t| Guess::ALL.map(|g| (t, g)))
                {
                    let what = format!(
                        "rows {rows:?} τ {tau} block {block_rows} W trains {head_trains} \
                         guess {guess:?}"
                    );
                    let (v, gh, gw) =
                        ours(&h, &w, rows, tau, block_rows, head_trains, &weights, guess);
                    assert_close(&format!("values, {what}"), &v, &values, 1e-5, 1e-5);
                    assert_close(&format!("∂/∂h, {what}"), &gh, &dh, 1e-5, 1e-4);
                    match gw {
                        Some(gw) => assert_close(&format!("∂/∂W, {what}"), &gw, &dw, 1e-5, 1e-4),
                        None => assert!(!head_trains, "a trained head gets a gradient: {what}"),
                    }
                }
            }
        }
    }
}

#[test]
fn fused_head_equals_the_unfused_projection_and_checks_its_inputs() {
    let (batch, time) = (2, 4);
    let hidden = Mat::random(batch * time, D, 1.0, 31).tensor::<Plain>();
    let hidden = hidden.reshape([batch, time, D]);
    let head = Mat::random(V, D, 1.0, 32).tensor::<Plain>();
    let ids = int_tensor::<Plain, 2>(vec![1, 2, 3, 4, 5, 6, 7, 8], [batch, time]);
    let mask =
        Tensor::<Plain, 2, burn::tensor::Int>::from_ints([[1, 1, 1, 0], [0, 1, 1, 1]], &device())
            .bool();
    let fused = sequence_log_probs_from_hidden(
        hidden.clone(),
        head.clone(),
        ids.clone(),
        mask.clone(),
        0.8,
    )
    .unwrap();
    let logits = hidden.clone().matmul(head.clone().transpose().unsqueeze());
    let unfused = sequence_log_probs(logits, ids.clone(), mask.clone(), 0.8, 3).unwrap();
    assert_close("values", &to_vec(fused), &to_vec(unfused), 1e-6, 1e-5);

    let narrow = Mat::random(V, D - 1, 1.0, 33).tensor::<Plain>();
    let e = sequence_log_probs_from_hidden(hidden.clone(), narrow, ids.clone(), mask.clone(), 1.0)
        .unwrap_err();
    assert!(matches!(e, DivergenceError::ShapeMismatch { .. }), "{e}");
    let out_of_vocab = int_tensor::<Plain, 2>(vec![1, 2, 3, 4, 5, 6, 7, V as i64], [batch, time]);
    let e = sequence_log_probs_from_hidden(hidden.clone(), head.clone(), out_of_vocab, mask, 1.0)
        .unwrap_err();
    assert!(
        matches!(
            e,
            DivergenceError::InvalidParameter {
                name: "token id",
                ..
            }
        ),
        "{e}"
    );
    let none = Tensor::<Plain, 2, burn::tensor::Int>::zeros([batch, time], &device()).bool();
    let e = sequence_log_probs_from_hidden(hidden, head, ids, none, 1.0).unwrap_err();
    assert!(matches!(e, DivergenceError::EmptyMask), "{e}");
}

/// Through the public API, per-token weights `[B, T]` told to a head that trains (a
/// sequence mean's `1 / len_b`, here) give the gradients of the head told nothing, on a
/// masked batch; weights of another shape are an error.
#[test]
fn linear_weights_give_the_same_gradients_through_the_public_api() {
    let (batch, time) = (2, 4);
    let hidden = Mat::random(batch * time, D, 1.0, 51).tensor::<B>();
    let hidden = hidden.reshape([batch, time, D]).require_grad();
    let head = Mat::random(V, D, 1.0, 52).tensor::<B>().require_grad();
    let ids = int_tensor::<B, 2>(vec![1, 2, 3, 4, 5, 6, 7, 8], [batch, time]);
    let mask =
        Tensor::<B, 2, burn::tensor::Int>::from_ints([[1, 1, 1, 0], [0, 1, 0, 1]], &device())
            .bool();
    let weights = Tensor::<B, 2>::from_floats(
        [[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0], [0.0, 0.5, 0.0, 0.5]],
        &device(),
    );
    let gradients = |linear: Option<Tensor<B, 2>>| {
        let lp = sequence_log_probs_from_hidden_with(
            hidden.clone(),
            head.clone(),
            ids.clone(),
            mask.clone(),
            0.9,
            HeadOptions {
                observe: None,
                linear,
            },
        )
        .unwrap();
        let grads = (lp * weights.clone()).sum().neg().backward();
        (
            to_vec(hidden.grad(&grads).unwrap()),
            to_vec(head.grad(&grads).unwrap()),
        )
    };
    let (dh, dw) = gradients(None);
    let (dh_told, dw_told) = gradients(Some(weights.clone()));
    assert_close("∂/∂h", &dh_told, &dh, 1e-6, 1e-5);
    assert_close("∂/∂W", &dw_told, &dw, 1e-6, 1e-5);
    let e = sequence_log_probs_from_hidden_with(
        hidden.clone(),
        head.clone(),
        ids,
        mask,
        1.0,
        HeadOptions {
            observe: None,
            linear: Some(weights.reshape([batch * time, 1])),
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DivergenceError::ShapeMismatch {
                what: "linear weights",
                ..
            }
        ),
        "{e}"
    );
}
