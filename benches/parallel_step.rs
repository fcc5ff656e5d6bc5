//! Data-parallel steps of SmolLM2-135M on this machine: the same GRPO step (4 prompts × 4
//! answers of up to 32 tokens, arithmetic with worked answers) taken by one worker and by two
//! workers (threads, one replica each), with LoRA adapters (r 16) and with every weight
//! trained. Prints a Markdown table: seconds per step (mean of the steps after a warm-up),
//! steps/s, the rollout, train and exchange seconds of a step, and the bytes of gradients each
//! worker all-reduces per update.
//!
//! `cargo bench -p opd-trainers --bench parallel_step [-- STEPS [WORKERS…]]` (the model from
//! `scripts/fetch-smollm2.sh`); with `--features cuda`, on CUDA devices `0..workers`
//! (`scripts/gpu-bench.sh`).

use opd_divergences::TrainingBackend;
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use opd_policy::{Llama, LoraConfig, LoraTarget};
use opd_tasks::{MathAnswer, Task};
use opd_trainers::parallel::{Group, Topology, worker_device};
use opd_trainers::{
    GrpoConfig, Objective, OptimizerConfig, SamplingConfig, StepMetrics, TrainConfig, Trainer,
};

#[cfg(not(feature = "cuda"))]
type A = Autodiff<burn::backend::Flex>;
#[cfg(feature = "cuda")]
type A = Autodiff<burn::backend::Cuda>;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

fn tasks() -> Vec<Task> {
    (0..16)
        .map(|i| {
            let (a, b) = (3 + i, 11 + 2 * i);
            Task::with_answer(
                format!("What is {a} + {b}? Give the final answer after ####."),
                (a + b).to_string(),
            )
        })
        .collect()
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        prompts_per_step: 4,
        micro_batch: 8,
        seed: 3,
        optimizer: OptimizerConfig {
            learning_rate: 1e-5,
            ..OptimizerConfig::default()
        },
        sampling: SamplingConfig {
            max_new_tokens: 32,
            ..SamplingConfig::default()
        },
        objective: Objective::Grpo(GrpoConfig {
            group_size: 4,
            ..GrpoConfig::default()
        }),
        ..TrainConfig::default()
    }
}

/// SmolLM2 on `device`, with LoRA adapters when `lora`.
fn student<B: AutodiffBackend>(
    lora: bool,
    device: &B::Device,
) -> (Llama<B>, opd_policy::ChatTokenizer) {
    let (model, tokenizer) = opd_policy::load::<B>(MODEL, device).expect("SmolLM2");
    let model = if lora {
        model.with_lora(&LoraConfig {
            rank: 16,
            alpha: 32.0,
            targets: LoraTarget::ALL.to_vec(),
            seed: 0,
        })
    } else {
        model
    };
    (model, tokenizer)
}

/// Trainable values (what each worker all-reduces per update).
fn trainable_values<B: AutodiffBackend>(model: &Llama<B>) -> usize {
    struct Count(usize);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) {
            if param.val().is_require_grad() {
                self.0 += param.val().shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}

/// Each measured step's metrics (worker 0's) and wall seconds, the first step left out.
fn run<B: TrainingBackend>(
    workers: usize,
    lora: bool,
    steps: usize,
) -> (Vec<(StepMetrics, f64)>, usize) {
    let measure = |trainer: &mut Trainer<B>| {
        let mut measured = Vec::new();
        let mut last = Instant::now();
        trainer
            .train(|m| {
                let now = Instant::now();
                if m.step > 0 {
                    measured.push((m.clone(), (now - last).as_secs_f64()));
                }
                last = now;
            })
            .unwrap();
        measured
    };
    if workers == 1 {
        let (model, tokenizer) = student::<B>(lora, &Default::default());
        let values = trainable_values(&model);
        let mut trainer = Trainer::new(
            config(steps),
            model,
            tokenizer,
            tasks(),
            MathAnswer::default(),
        )
        .unwrap();
        return (measure(&mut trainer), values);
    }
    let group =
        Group::<B::InnerBackend>::new(Topology::local(workers, Duration::from_secs(600))).unwrap();
    let devices: Vec<B::Device> = (0..workers)
        .map(|local| worker_device::<B>(&Default::default(), local))
        .collect();
    let mut results = group.run(&devices, |replica| -> Result<_, opd_trainers::TrainError> {
        let (model, tokenizer) = student::<B>(lora, replica.device());
        let values = trainable_values(&model);
        let mut trainer = Trainer::builder(
            config(steps),
            model,
            tokenizer,
            tasks(),
            MathAnswer::default(),
        )
        .replica(replica)
        .build()?;
        let measured = measure(&mut trainer);
        trainer.leave_group();
        Ok((measured, values))
    });
    results.remove(0).unwrap_or_else(|e| panic!("{e}"))
}

fn main() {
    opd_policy::allocator::tune();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let steps = args.first().copied().unwrap_or(3);
    let counts = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![1, 2]
    };
    println!(
        "| trained | workers | s/step | steps/s | rollout s | train s | exchange s | gradient MB per update |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for lora in [true, false] {
        for &workers in &counts {
            let (measured, values) = run::<A>(workers, lora, steps);
            let n = measured.len().max(1) as f64;
            let mean = |f: &dyn Fn(&StepMetrics) -> f64| {
                measured.iter().map(|(m, _)| f(m)).sum::<f64>() / n
            };
            let seconds = measured.iter().map(|(_, s)| s).sum::<f64>() / n;
            println!(
                "| {} | {workers} | {seconds:.2} | {:.3} | {:.2} | {:.2} | {:.3} | {:.1} |",
                if lora { "LoRA r 16" } else { "all weights" },
                1.0 / seconds,
                mean(&|m| m.seconds.rollout),
                mean(&|m| m.seconds.train),
                mean(&|m| m.exchange_seconds),
                values as f64 * 4.0 / 1e6,
            );
        }
    }
}
