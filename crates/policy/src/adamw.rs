//! AdamW in one pass over each parameter, in place, on the CPU backend.
//!
//! burn's [`burn::optim::AdamW`] computes a step as about fourteen tensor operations, each of
//! which reads and writes a whole parameter-sized buffer (540 MB for SmolLM2-135M): the step is
//! bound by memory traffic and page zeroing. [`FusedAdamW`] computes the same update reading
//! `θ, g, m, v` once and writing `θ, m, v` in place, on the `flex` backend; elsewhere (other
//! backends, other dtypes) it is burn's `AdamW`. Its state is burn's [`AdamWState`], so records
//! saved by either optimizer load into the other.

use burn::module::AutodiffModule;
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, LearningRate, SimpleOptimizer, adaptor::OptimizerAdaptor,
};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::Device;

/// AdamW with decoupled weight decay, per element, at step `t` (counting from 1):
///
/// `m ← β₁·m + (1 − β₁)·g`, `v ← β₂·v + (1 − β₂)·g²`,
/// `θ ← θ·(1 − lr·λ) − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)`,
///
/// with `m = v = 0` before the first step; the same update, in the same order of operations,
/// as burn's [`AdamW`] (without AMSGrad or cautious weight decay).
#[derive(Clone, Debug)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl FusedAdamW {
    /// AdamW with moments' rates `β₁, β₂`, `ε` in the denominator and weight decay `λ`.
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        }
    }

    /// The optimizer over every parameter of module `M`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }

    /// burn's `AdamW` with the same settings, for backends without the fused kernel.
    fn generic(&self) -> AdamW {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
            .build()
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        #[cfg(feature = "flex")]
        let (tensor, grad, state) = match flex::step(self, lr, tensor, grad, state) {
            Ok(stepped) => return stepped,
            Err(unchanged) => unchanged,
        };
        SimpleOptimizer::step(&self.generic(), lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device<B>) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::flex::FlexTensor;
    use burn::optim::{AdamWState, AdaptiveMomentumState};
    use burn::prelude::*;
    use burn::tensor::{DType, TensorMetadata};
    use rayon::prelude::*;

    use super::FusedAdamW;
    use crate::flex_tensor::{from_flex, into_flex, is_transposed_view};

    /// The moments' state after a step: step count `time`, `m` and `v`.
    fn moments<B: Backend, const D: usize>(
        time: usize,
        moment_1: Tensor<B, D>,
        moment_2: Tensor<B, D>,
    ) -> AdamWState<B, D> {
        AdamWState {
            momentum: AdaptiveMomentumState {
                time,
                moment_1,
                moment_2,
                max_moment_2: None,
            },
        }
    }

    /// Elements per parallel task.
    const CHUNK: usize = 1 << 16;

    type Stepped<B, const D: usize> = (Tensor<B, D>, Option<AdamWState<B, D>>);
    type Unchanged<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Option<AdamWState<B, D>>);

    /// The step in one pass when every tensor is an f32 `flex` tensor of one shape; otherwise
    /// the inputs back, untouched.
    pub fn step<B: Backend, const D: usize>(
        adam: &FusedAdamW,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamWState<B, D>>,
    ) -> Result<Stepped<B, D>, Unchanged<B, D>> {
        let shape = tensor.shape();
        let fits = |t: &FlexTensor| t.dtype() == DType::F32 && t.shape() == shape;
        if state
            .as_ref()
            .is_some_and(|s| s.momentum.max_moment_2.is_some())
        {
            return Err((tensor, grad, state));
        }
        let (theta, g) = match (into_flex(tensor), into_flex(grad)) {
            (Ok(theta), Ok(g)) if fits(&theta) && fits(&g) => (theta, g),
            (theta, g) => return Err((back(theta), back(g), state)),
        };
        let (time, m, v) = match state {
            None => (1, None, None),
            Some(s) => {
                let AdamWState { momentum } = s;
                match (into_flex(momentum.moment_1), into_flex(momentum.moment_2)) {
                    (Ok(m), Ok(v)) if fits(&m) && fits(&v) => (momentum.time + 1, Some(m), Some(v)),
                    (m, v) => {
                        let state = moments(momentum.time, back(m), back(v));
                        return Err((wrap(theta), wrap(g), Some(state)));
                    }
                }
            }
        };
        let (theta, m, v) = update(adam, lr, time, theta, &g, m, v);
        Ok((wrap(theta), Some(moments(time, wrap(m), wrap(v)))))
    }

    /// A `flex` tensor as a tensor of backend `B` (which is `flex` whenever one was made).
    fn wrap<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
        from_flex(t).expect("a flex tensor came from this backend")
    }

    /// Either side of [`into_flex`]'s result as a tensor of backend `B`.
    fn back<B: Backend, const D: usize>(t: Result<FlexTensor, Tensor<B, D>>) -> Tensor<B, D> {
        t.map_or_else(|t| t, wrap)
    }

    /// `θ, m, v` after step `time`, written in place where a buffer is not shared (a shared
    /// one is copied first); `m` and `v` start from `(1 − β₁)·g` and `(1 − β₂)·g²` at step 1.
    ///
    /// A weight kept as the transposed view of a row-major matrix (how checkpoints load) stays
    /// one, and its moments are kept in the same order, so the decode kernels keep reading
    /// whole weight rows: the update walks the buffers in storage order and reads the gradient
    /// (logical order) transposed, a block of rows at a time.
    fn update(
        adam: &FusedAdamW,
        lr: f64,
        time: usize,
        theta: FlexTensor,
        g: &FlexTensor,
        m: Option<FlexTensor>,
        v: Option<FlexTensor>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = theta.shape();
        let (k, n) = match shape.num_dims() {
            2 => (shape[0], shape[1]),
            _ => (0, 0),
        };
        let transposed = is_transposed_view(&theta);
        // In storage order: `θ` is `[n, k]` row-major when transposed (the view turned back).
        let orient = |t: FlexTensor| if transposed { t.transpose(0, 1) } else { t };
        let mut theta = orient(theta).to_contiguous();
        let g = g.to_contiguous();
        let grads = g.storage::<f32>();
        let len = grads.len();
        let zeros = || FlexTensor::from_data(TensorData::new(vec![0f32; len], theta.shape()));
        let (mut m, mut v) = match (m, v) {
            (Some(m), Some(v)) => (orient(m).to_contiguous(), orient(v).to_contiguous()),
            _ => (zeros(), zeros()),
        };
        let rule = Rule::new(adam, lr, time);
        let task = if transposed { ROWS * k } else { CHUNK };
        let theta_values = values_mut(&mut theta);
        let m_values = values_mut(&mut m);
        let v_values = values_mut(&mut v);
        debug_assert!(theta_values.len() == len && m_values.len() == len && v_values.len() == len);
        theta_values
            .par_chunks_mut(task)
            .zip(m_values.par_chunks_mut(task))
            .zip(v_values.par_chunks_mut(task))
            .enumerate()
            .for_each(|(t, ((theta, m), v))| {
                if !transposed {
                    return rule.apply(theta, m, v, &grads[t * task..][..theta.len()]);
                }
                // Rows `r0 ..` of the `[n, k]` storage: element `(r, c)` is `g[c·n + r]`.
                let (r0, rows) = (t * ROWS, theta.len() / k);
                let mut block = vec![0f32; rows * k];
                for c in 0..k {
                    let column = &grads[c * n + r0..][..rows];
                    for (r, &value) in column.iter().enumerate() {
                        block[r * k + c] = value;
                    }
                }
                rule.apply(theta, m, v, &block);
            });
        (orient(theta), orient(m), orient(v))
    }

    /// Storage rows of a transposed weight per parallel task.
    const ROWS: usize = 16;

    /// The per-element update of one step, its constants computed once.
    struct Rule {
        first: bool,
        beta_1: f32,
        beta_2: f32,
        factor_1: f32,
        factor_2: f32,
        correct_1: f32,
        correct_2: f32,
        keep: Option<f32>,
        lr: f32,
        epsilon: f32,
    }

    impl Rule {
        fn new(adam: &FusedAdamW, lr: f64, time: usize) -> Self {
            let (beta_1, beta_2) = (adam.beta_1, adam.beta_2);
            let t = time as i32;
            let decay_rate = lr * adam.weight_decay as f64;
            Self {
                first: time == 1,
                beta_1,
                beta_2,
                factor_1: 1.0 - beta_1,
                factor_2: 1.0 - beta_2,
                correct_1: 1.0 - beta_1.powi(t),
                correct_2: 1.0 - beta_2.powi(t),
                keep: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
                lr: lr as f32,
                epsilon: adam.epsilon,
            }
        }

        /// `m, v, θ` updated in place from the gradients `g`, element by element.
        fn apply(&self, theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
            for (((theta, m), v), &g) in theta.iter_mut().zip(m).zip(v).zip(g) {
                (*m, *v) = if self.first {
                    (g * self.factor_1, g * g * self.factor_2)
                } else {
                    (
                        *m * self.beta_1 + g * self.factor_1,
                        *v * self.beta_2 + g * g * self.factor_2,
                    )
                };
                let delta = (*m / self.correct_1) / ((*v / self.correct_2).sqrt() + self.epsilon);
                let decayed = self.keep.map_or(*theta, |keep| *theta * keep);
                *theta = decayed - delta * self.lr;
            }
        }
    }

    /// The elements to write: in place when the buffer is this tensor's alone (`to_contiguous`
    /// made it cover its whole buffer in order), else a copy's.
    fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
        t.storage_mut::<f32>()
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::module::{AutodiffModule, Param};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::prelude::*;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::Distribution;

    use super::FusedAdamW;

    type A = Autodiff<Flex>;

    /// A layer with a transposed-view weight (how checkpoints are loaded) and a bias, both
    /// materialized (a lazily initialized parameter draws new values in each clone).
    fn layer(device: &Device<A>) -> Linear<A> {
        let mut layer = LinearConfig::new(40, 24).init::<A>(device);
        let rows = Tensor::<A, 2>::random([24, 40], Distribution::Normal(0.0, 1.0), device);
        layer.weight = Param::from_tensor(rows.transpose());
        let bias = Tensor::<A, 1>::random([24], Distribution::Normal(0.0, 1.0), device);
        layer.bias = Some(Param::from_tensor(bias));
        layer
    }

    fn values(layer: &Linear<A>) -> Vec<f32> {
        let weight: Vec<f32> = layer.weight.val().into_data().to_vec().unwrap();
        let bias: Vec<f32> = layer
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .to_vec()
            .unwrap();
        weight.into_iter().chain(bias).collect()
    }

    /// Five steps, with weight decay, from a transposed-view weight, against burn's `AdamW`
    /// run on the same gradients (the weight stays a transposed view); then the fused
    /// optimizer resumes from burn's record.
    #[test]
    fn matches_burns_adamw_and_resumes_from_its_record() {
        let device = Default::default();
        let (b1, b2, eps, wd) = (0.8, 0.95, 1e-6, 0.1);
        let mut ours = layer(&device);
        let mut theirs = ours.clone();
        let mut fused = FusedAdamW::new(b1, b2, eps, wd).init::<A, Linear<A>>();
        let mut burn_adamw = AdamWConfig::new()
            .with_beta_1(b1)
            .with_beta_2(b2)
            .with_epsilon(eps)
            .with_weight_decay(wd)
            .init::<A, Linear<A>>();
        let loss = |layer: &Linear<A>, x: Tensor<A, 2>| layer.forward(x).powi_scalar(3).sum();
        for step in 0..5 {
            let x = Tensor::<A, 2>::random([6, 40], Distribution::Normal(0.0, 1.0), &device);
            let lr = 1e-2 * (step + 1) as f64;
            let grads = GradientsParams::from_grads(loss(&ours, x.clone()).backward(), &ours);
            ours = fused.step(lr, ours, grads);
            let grads = GradientsParams::from_grads(loss(&theirs, x).backward(), &theirs);
            theirs = burn_adamw.step(lr, theirs, grads);
            for (i, (a, b)) in values(&ours).iter().zip(values(&theirs)).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "step {step}, element {i}: {a} vs {b}"
                );
            }
        }
        // burn's state saved, the fused optimizer resumed from it: the same next step.
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let saved = recorder.record(burn_adamw.to_record(), ()).unwrap();
        let mut resumed = FusedAdamW::new(b1, b2, eps, wd)
            .init::<A, Linear<A>>()
            .load_record(recorder.load(saved, &device).unwrap());
        // The weight is still the transposed view of a row-major `[24, 40]` matrix.
        let weight = crate::flex_tensor::to_flex(ours.weight.val().inner()).unwrap();
        assert_eq!(weight.layout().strides(), [1, 40]);
        let x = Tensor::<A, 2>::random([6, 40], Distribution::Normal(0.0, 1.0), &device);
        let next = theirs.clone();
        let grads = GradientsParams::from_grads(loss(&next, x.clone()).backward(), &next);
        let next = resumed.step(1e-2, next, grads);
        let grads = GradientsParams::from_grads(loss(&theirs, x).backward(), &theirs);
        let theirs = burn_adamw.step(1e-2, theirs, grads);
        for (a, b) in values(&next).iter().zip(values(&theirs)) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "resumed: {a} vs {b}"
            );
        }
    }

    /// A parameter whose buffer is shared (a clone kept elsewhere) is copied, not written.
    #[test]
    fn leaves_a_shared_buffer_alone() {
        let device = Default::default();
        let model = layer(&device);
        let kept = model.clone().valid();
        let before: Vec<f32> = kept.weight.val().into_data().to_vec().unwrap();
        let mut fused = FusedAdamW::new(0.9, 0.999, 1e-8, 0.0).init::<A, Linear<A>>();
        let x = Tensor::<A, 2>::ones([2, 40], &device);
        let grads = GradientsParams::from_grads(model.forward(x).sum().backward(), &model);
        let stepped = fused.step(1e-1, model, grads);
        let after: Vec<f32> = kept.weight.val().into_data().to_vec().unwrap();
        assert_eq!(before, after);
        let moved: Vec<f32> = stepped.weight.val().into_data().to_vec().unwrap();
        assert!(moved.iter().zip(&before).all(|(a, b)| (a - b).abs() > 0.05));
    }
}
