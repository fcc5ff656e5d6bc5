//! Shared by the divergence benches: the measured computations, one per kind.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Int, Tensor};
use opd_divergences::sampled::Estimator;
use opd_divergences::{
    Divergence, DivergenceOptions, Support, TeacherTarget, divergence, token_log_probs,
};

pub type B = Autodiff<Flex>;

/// Positions per chunk: the library's default.
const CHUNK: usize = 32;

/// What one bench iteration computes, forward and backward.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Full-vocabulary JSD_0.5 (TRL's `generalized_jsd_loss` at β = 0.5).
    FullJsd,
    /// Full-vocabulary reverse KL.
    FullReverseKl,
    /// Reverse KL on the teacher's top-64 plus a tail bucket.
    TopK64ReverseKl,
    /// `k3` at the sampled token, from both models' token log-probs.
    SampledK3,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::FullJsd,
        Kind::FullReverseKl,
        Kind::TopK64ReverseKl,
        Kind::SampledK3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::FullJsd => "full-jsd0.5",
            Kind::FullReverseKl => "full-reverse-kl",
            Kind::TopK64ReverseKl => "topk64-reverse-kl",
            Kind::SampledK3 => "sampled-k3",
        }
    }
}

/// Random student and teacher logits `[n, vocab]` and sampled ids `[n]`.
pub struct Inputs {
    pub student: Tensor<B, 2>,
    pub teacher: Tensor<B, 2>,
    pub ids: Tensor<B, 1, Int>,
}

impl Inputs {
    pub fn new(n: usize, vocab: usize) -> Self {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 3.0);
        Self {
            student: Tensor::random([n, vocab], normal, &device),
            teacher: Tensor::random([n, vocab], normal, &device),
            ids: Tensor::<B, 1>::random([n], Distribution::Uniform(0.0, vocab as f64), &device)
                .int(),
        }
    }
}

/// Mean loss over positions, differentiated w.r.t. the student logits; returns the gradient.
pub fn forward_backward(kind: Kind, inputs: &Inputs) -> Tensor<Flex, 2> {
    let student = inputs.student.clone().require_grad();
    let teacher = inputs.teacher.clone();
    let options = DivergenceOptions::new;
    let per_position = match kind {
        Kind::FullJsd => divergence(
            student.clone(),
            TeacherTarget::Logits(teacher),
            options(Divergence::Jsd { beta: 0.5 }),
        ),
        Kind::FullReverseKl => divergence(
            student.clone(),
            TeacherTarget::Logits(teacher),
            options(Divergence::ReverseKl),
        ),
        Kind::TopK64ReverseKl => divergence(
            student.clone(),
            TeacherTarget::Logits(teacher),
            options(Divergence::ReverseKl).with_support(Support::TeacherTopK(64)),
        ),
        Kind::SampledK3 => {
            let s = token_log_probs(student.clone(), inputs.ids.clone(), 1.0, CHUNK).unwrap();
            let t = token_log_probs(teacher, inputs.ids.clone(), 1.0, CHUNK).unwrap();
            Ok(Estimator::K3.estimate(s, t))
        }
    }
    .expect("valid inputs");
    let grads = per_position.mean().backward();
    student.grad(&grads).expect("student gradient")
}
