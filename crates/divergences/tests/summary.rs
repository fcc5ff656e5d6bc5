//! The per-row entropy and top-k against an independent f64 reference, on the CPU kernel, the
//! portable path and through `Autodiff`.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use opd_divergences::{RowSummary, generic, summarize};

/// `(H, top-k ids, their log p)` per row in f64.
fn reference(m: &Mat, tau: f64, k: usize) -> (Vec<f64>, Vec<usize>, Vec<f64>) {
    let (mut entropy, mut ids, mut log_probs) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..m.rows {
        let log_p = ref_log_softmax(m.row(r), tau);
        entropy.push(-log_p.iter().map(|l| l.exp() * l).sum::<f64>());
        for id in top_k_ids(&log_p, k) {
            ids.push(id);
            log_probs.push(log_p[id]);
        }
    }
    (entropy, ids, log_probs)
}

fn check(what: &str, s: &RowSummary, m: &Mat, tau: f64, k: usize) {
    let (entropy, ids, log_probs) = reference(m, tau, k);
    assert_eq!(s.k, k, "{what}: k");
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert_close(
        &format!("{what}: entropy"),
        &f(&s.entropy),
        &entropy,
        2e-5,
        1e-5,
    );
    let got: Vec<usize> = s.ids.iter().map(|&i| i as usize).collect();
    assert_eq!(got, ids, "{what}: ids");
    assert_close(
        &format!("{what}: log p"),
        &f(&s.log_probs),
        &log_probs,
        2e-5,
        1e-5,
    );
}

#[test]
fn summaries_match_the_f64_reference_on_every_path() {
    // 1,003 columns: whole blocks of 16 and a remainder; scale 8 gives peaked and flat rows.
    let m = Mat::random(9, 1003, 8.0, 7).rounded_to_f32();
    for (tau, k) in [(1.0, 16), (0.7, 1), (1.4, 5), (1.0, 0)] {
        let what = format!("τ {tau}, k {k}");
        check(
            &format!("flex {what}"),
            &summarize(m.tensor::<Plain>(), tau, k),
            &m,
            tau,
            k,
        );
        check(
            &format!("autodiff {what}"),
            &summarize(m.tensor::<B>(), tau, k),
            &m,
            tau,
            k,
        );
        let portable =
            generic::summarize_rows::<Plain>(m.tensor::<Plain>().into_primitive().tensor(), tau, k);
        check(&format!("portable {what}"), &portable, &m, tau, k);
    }
}

#[test]
fn a_strided_view_and_a_row_range_summarize_like_their_copies() {
    let m = Mat::random(40, 6, 3.0, 9).rounded_to_f32();
    // The transpose of a `[40, 6]` matrix is a `[6, 40]` view with strides `[1, 6]`.
    let transposed = Mat {
        rows: 6,
        cols: 40,
        data: (0..6)
            .flat_map(|c| (0..40).map(move |r| (r, c)))
            .map(|(r, c)| m.data[r * 6 + c])
            .collect(),
    };
    check(
        "transposed",
        &summarize(m.tensor::<Plain>().transpose(), 1.0, 4),
        &transposed,
        1.0,
        4,
    );
    let rows = Mat {
        rows: 3,
        cols: 6,
        data: m.data[12..30].to_vec(),
    };
    check(
        "narrowed",
        &summarize(m.tensor::<Plain>().narrow(0, 2, 3), 0.9, 3),
        &rows,
        0.9,
        3,
    );
}

#[test]
fn k_above_the_vocabulary_keeps_every_token_and_a_masked_row_still_ranks() {
    let m = Mat::random(2, 5, 1.0, 3).rounded_to_f32();
    check("k > V", &summarize(m.tensor::<Plain>(), 1.0, 9), &m, 1.0, 5);
    // Masked logits (−∞) rank last and contribute nothing to the entropy.
    let z = Tensor::<Plain, 2>::from_data(
        TensorData::new(
            vec![0.0f32, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY],
            [1, 4],
        ),
        &device(),
    );
    let s = summarize(z, 1.0, 3);
    assert_eq!(s.ids, vec![0, 2, 1]);
    assert!(
        (s.entropy[0] as f64 - 2f64.ln()).abs() < 1e-6,
        "{:?}",
        s.entropy
    );
    assert_eq!(s.log_probs[2], f32::NEG_INFINITY);
}
