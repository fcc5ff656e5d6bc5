//! Property tests of the divergences' identities on random logits.

// Rows, weights and ids are parallel arrays: indexing them together reads best.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use opd_divergences::{Divergence, DivergenceOptions, Support, TeacherTarget, divergence};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn values(zs: &Mat, zt: &Mat, options: DivergenceOptions) -> Vec<f64> {
    to_vec(
        divergence(
            zs.tensor::<Plain>(),
            TeacherTarget::Logits(zt.tensor::<Plain>()),
            options,
        )
        .unwrap(),
    )
}

fn divergence_strategy() -> impl Strategy<Value = Divergence> {
    prop_oneof![
        Just(Divergence::ForwardKl),
        Just(Divergence::ReverseKl),
        (0.01f64..0.99).prop_map(|beta| Divergence::Jsd { beta }),
    ]
}

/// Random logits `[rows, vocab]` of a given scale, as a seed so shrinking stays cheap.
fn logits() -> impl Strategy<Value = (usize, usize, f64, u64, u64)> {
    (
        1usize..6,
        2usize..40,
        0.1f64..8.0,
        any::<u64>(),
        any::<u64>(),
    )
}

proptest! {
    // A fixed seed: CI sees the same cases every run.
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: RngSeed::Fixed(20261122), ..ProptestConfig::default() })]

    #[test]
    fn non_negative_and_zero_iff_equal((rows, vocab, scale, a, b) in logits(), d in divergence_strategy()) {
        let zs = Mat::random(rows, vocab, scale, a);
        let zt = Mat::random(rows, vocab, scale, b);
        let options = DivergenceOptions::new(d);
        for v in values(&zs, &zt, options) {
            prop_assert!(v >= -1e-5, "{d:?} gave {v}");
        }
        for v in values(&zs, &zs, options) {
            prop_assert!(v.abs() <= 1e-5, "{d:?}(p, p) = {v}");
        }
        // Distinct distributions give a strictly positive divergence (well above f32 noise).
        let mut peaked = zs.clone();
        peaked.data.iter_mut().step_by(vocab).for_each(|x| *x += 5.0);
        for v in values(&peaked, &zs, options) {
            prop_assert!(v > 1e-7, "{d:?} of distinct distributions = {v}");
        }
    }

    #[test]
    fn invariant_to_a_constant_added_to_logits((rows, vocab, scale, a, b) in logits(), d in divergence_strategy(), shift in -50.0f64..50.0) {
        let zs = Mat::random(rows, vocab, scale, a);
        let zt = Mat::random(rows, vocab, scale, b);
        let mut zs_shift = zs.clone();
        zs_shift.data.iter_mut().for_each(|x| *x += shift);
        let mut zt_shift = zt.clone();
        zt_shift.data.iter_mut().for_each(|x| *x -= shift / 2.0);
        let options = DivergenceOptions::new(d);
        assert_close("shifted", &values(&zs_shift, &zt_shift, options), &values(&zs, &zt, options), 5e-5, 1e-3);
    }

    #[test]
    fn jsd_half_is_symmetric_and_bounded_by_ln2((rows, vocab, scale, a, b) in logits()) {
        let zs = Mat::random(rows, vocab, scale * 3.0, a);
        let zt = Mat::random(rows, vocab, scale * 3.0, b);
        let options = DivergenceOptions::new(Divergence::Jsd { beta: 0.5 });
        let st = values(&zs, &zt, options);
        assert_close("symmetry", &st, &values(&zt, &zs, options), 1e-5, 1e-4);
        for v in st {
            prop_assert!(v <= std::f64::consts::LN_2 + 1e-5);
        }
    }

    #[test]
    fn beta_endpoints_are_the_kls_and_the_mixture_vanishes_there((rows, vocab, scale, a, b) in logits()) {
        let zs = Mat::random(rows, vocab, scale, a);
        let zt = Mat::random(rows, vocab, scale, b);
        let fkl = values(&zs, &zt, DivergenceOptions::new(Divergence::ForwardKl));
        let rkl = values(&zs, &zt, DivergenceOptions::new(Divergence::ReverseKl));
        assert_close("β=0", &values(&zs, &zt, DivergenceOptions::new(Divergence::jsd(0.0).unwrap())), &fkl, 0.0, 0.0);
        assert_close("β=1", &values(&zs, &zt, DivergenceOptions::new(Divergence::jsd(1.0).unwrap())), &rkl, 0.0, 0.0);
        // The mixture formula itself tends to 0 at both ends, as β·KL(p_T‖p_S) and (1−β)·KL(p_S‖p_T).
        for beta in [1e-4, 1.0 - 1e-4] {
            let jsd = values(&zs, &zt, DivergenceOptions::new(Divergence::Jsd { beta }));
            for v in jsd {
                prop_assert!(v.abs() <= 1e-3 * (1.0 + scale), "JSD at β={beta} is {v}");
            }
        }
    }

    #[test]
    fn jsd_over_beta_tends_to_forward_kl((rows, vocab, scale, a, b) in logits()) {
        let zs = Mat::random(rows, vocab, scale.min(3.0), a).rounded_to_f32();
        let zt = Mat::random(rows, vocab, scale.min(3.0), b).rounded_to_f32();
        // f64 reference: JSD_β / β → KL(p_T‖p_S) with error O(β).
        for r in 0..rows {
            let fkl = reference(zs.row(r), zt.row(r), RefDiv::Fkl, RefSupport::Full, 1.0);
            let small = reference(zs.row(r), zt.row(r), RefDiv::Jsd(1e-6), RefSupport::Full, 1.0) / 1e-6;
            prop_assert!((small - fkl).abs() <= 1e-3 * (1.0 + fkl), "{small} vs {fkl}");
        }
        // And ours agrees with that reference at small β, where the two terms nearly cancel.
        let ours = values(&zs, &zt, DivergenceOptions::new(Divergence::Jsd { beta: 1e-3 }));
        let expected: Vec<f64> = (0..rows)
            .map(|r| reference(zs.row(r), zt.row(r), RefDiv::Jsd(1e-3), RefSupport::Full, 1.0))
            .collect();
        assert_close("JSD at β = 1e-3", &ours, &expected, 1e-6, 1e-3);
    }

    #[test]
    fn values_match_the_f64_reference((rows, vocab, scale, a, b) in logits(), d in divergence_strategy(), k in 1usize..8, tau in 0.3f64..3.0) {
        let zs = Mat::random(rows, vocab, scale, a).rounded_to_f32();
        let zt = Mat::random(rows, vocab, scale, b).rounded_to_f32();
        let k = k.min(vocab);
        for (support, rs) in [
            (Support::Full, RefSupport::Full),
            (Support::TeacherTopK(k), RefSupport::TeacherTopK(k)),
            (Support::StudentTopK(k), RefSupport::StudentTopK(k)),
        ] {
            let ours = values(&zs, &zt, DivergenceOptions::new(d).with_support(support).with_temperature(tau));
            let expected: Vec<f64> = (0..rows).map(|r| reference(zs.row(r), zt.row(r), match d {
                Divergence::ForwardKl => RefDiv::Fkl,
                Divergence::ReverseKl => RefDiv::Rkl,
                Divergence::Jsd { beta } => RefDiv::Jsd(beta),
            }, rs, tau)).collect();
            assert_close(&format!("{d:?} {support:?}"), &ours, &expected, 2e-5, 1e-3);
        }
    }

    #[test]
    fn top_k_with_k_equal_to_vocab_is_full((rows, vocab, scale, a, b) in logits(), d in divergence_strategy()) {
        let zs = Mat::random(rows, vocab, scale, a);
        let zt = Mat::random(rows, vocab, scale, b);
        let full = values(&zs, &zt, DivergenceOptions::new(d));
        for support in [Support::TeacherTopK(vocab), Support::StudentTopK(vocab + 3)] {
            assert_close("k = V", &values(&zs, &zt, DivergenceOptions::new(d).with_support(support)), &full, 0.0, 0.0);
        }
        // k = V − 1 leaves a one-token tail: the same distributions, so the same value.
        let near = values(&zs, &zt, DivergenceOptions::new(d).with_support(Support::TeacherTopK(vocab - 1)));
        assert_close("k = V - 1", &near, &full, 2e-5, 1e-3);
    }

    #[test]
    fn top_k_never_exceeds_full((rows, vocab, scale, a, b) in logits(), d in divergence_strategy(), k in 1usize..8) {
        // Merging outcomes into a tail bucket cannot increase an f-divergence (data processing).
        let zs = Mat::random(rows, vocab, scale, a);
        let zt = Mat::random(rows, vocab, scale, b);
        let full = values(&zs, &zt, DivergenceOptions::new(d));
        let top = values(&zs, &zt, DivergenceOptions::new(d).with_support(Support::TeacherTopK(k.min(vocab))));
        for (t, f) in top.iter().zip(full) {
            prop_assert!(*t <= f + 1e-5, "top-k {t} > full {f}");
        }
    }

    #[test]
    fn chunked_equals_unchunked((rows, vocab, scale, a, b) in logits(), d in divergence_strategy(), chunk in 1usize..5) {
        let zs = Mat::random(rows, vocab, scale, a);
        let zt = Mat::random(rows, vocab, scale, b);
        let whole = values(&zs, &zt, DivergenceOptions::new(d).with_chunk_size(1024));
        let chunked = values(&zs, &zt, DivergenceOptions::new(d).with_chunk_size(chunk));
        assert_close("chunked", &chunked, &whole, 0.0, 0.0);
    }

    #[test]
    fn temperature_scales_logits((rows, vocab, scale, a, b) in logits(), d in divergence_strategy(), tau in 0.2f64..5.0) {
        let zs = Mat::random(rows, vocab, scale, a);
        let zt = Mat::random(rows, vocab, scale, b);
        let scaled = |m: &Mat| Mat { data: m.data.iter().map(|x| x / tau).collect(), ..m.clone() };
        let with_tau = values(&zs, &zt, DivergenceOptions::new(d).with_temperature(tau));
        let pre_scaled = values(&scaled(&zs), &scaled(&zt), DivergenceOptions::new(d));
        assert_close("temperature", &with_tau, &pre_scaled, 2e-5, 1e-3);
    }
}
