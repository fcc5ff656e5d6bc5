//! The fused Flex kernels against the portable chunked implementation, values and gradients.

mod common;

use std::sync::Arc;

use burn::tensor::{Tensor, TensorPrimitive};
use common::*;
use opd_divergences::{
    Divergence, DivergenceBackend, DivergenceOptions, Rows, Support, TeacherLogits, generic,
};

fn prim(m: &Mat) -> burn::backend::flex::FlexTensor {
    m.tensor::<Plain>().into_primitive().tensor()
}

fn vals(t: burn::backend::flex::FlexTensor) -> Vec<f64> {
    to_vec(Tensor::<Plain, 1>::from_primitive(TensorPrimitive::Float(
        t,
    )))
}

fn grads(t: burn::backend::flex::FlexTensor) -> Vec<f64> {
    to_vec(Tensor::<Plain, 2>::from_primitive(TensorPrimitive::Float(
        t,
    )))
}

#[test]
fn fused_kernels_match_the_portable_path() {
    let zs = Mat::random(7, 300, 5.0, 61);
    let zt = Mat::random(7, 300, 5.0, 62);
    let teacher = TeacherLogits::Logits(prim(&zt));
    for rows in [Rows::All, Rows::Selected(Arc::from(vec![5, 0, 3]))] {
        let n = rows.count(7);
        let upstream = Mat::random(1, n, 2.0, 63);
        for d in [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd { beta: 0.3 },
        ] {
            for (tau, support) in [
                (1.0, Support::Full),
                (0.6, Support::Full),
                (1.0, Support::TeacherTopK(7)),
                (0.7, Support::StudentTopK(1)),
                (1.3, Support::TeacherTopK(299)),
            ] {
                let options = DivergenceOptions::new(d)
                    .with_temperature(tau)
                    .with_support(support)
                    .with_chunk_size(2);
                let fused = vals(Plain::divergence_rows(prim(&zs), &teacher, &rows, options));
                let portable = vals(generic::divergence_rows::<Plain>(
                    prim(&zs),
                    &teacher,
                    &rows,
                    options,
                ));
                assert_close(
                    &format!("{d:?} {support:?} τ={tau} values"),
                    &fused,
                    &portable,
                    1e-5,
                    1e-4,
                );
                let g = || {
                    upstream
                        .tensor::<Plain>()
                        .reshape([n])
                        .into_primitive()
                        .tensor()
                };
                let fused = grads(Plain::divergence_rows_backward(
                    prim(&zs),
                    &teacher,
                    &rows,
                    options,
                    g(),
                ));
                let portable = grads(generic::divergence_rows_backward::<Plain>(
                    prim(&zs),
                    &teacher,
                    &rows,
                    options,
                    g(),
                ));
                assert_close(
                    &format!("{d:?} {support:?} τ={tau} gradients"),
                    &fused,
                    &portable,
                    1e-6,
                    1e-4,
                );
            }
        }
        let ids = int_tensor::<Plain, 1>(vec![0, 299, 5, 17, 17, 100, 2], [7]).into_primitive();
        let fused = vals(Plain::token_log_probs(
            prim(&zs),
            ids.clone(),
            &rows,
            0.8,
            2,
        ));
        let portable = vals(generic::token_log_probs::<Plain>(
            prim(&zs),
            ids.clone(),
            &rows,
            0.8,
            2,
        ));
        assert_close("token log-probs", &fused, &portable, 1e-5, 1e-5);
        let g = || {
            upstream
                .tensor::<Plain>()
                .reshape([n])
                .into_primitive()
                .tensor()
        };
        let values = Plain::token_log_probs(prim(&zs), ids.clone(), &rows, 0.8, 2);
        let fused = grads(Plain::token_log_probs_backward(
            prim(&zs),
            ids.clone(),
            &rows,
            0.8,
            2,
            values.clone(),
            g(),
        ));
        let portable = grads(generic::token_log_probs_backward::<Plain>(
            prim(&zs),
            ids,
            &rows,
            0.8,
            2,
            g(),
        ));
        assert_close("token log-prob gradients", &fused, &portable, 1e-6, 1e-4);
    }
}
