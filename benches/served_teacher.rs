//! A teacher in process against the same teacher served over loopback HTTP (`opd serve`'s
//! server in this process, the `Remote` client), on SmolLM2:
//!
//! - scoring throughput (response tokens per second, top-16 support) at batch 1, 8 and 32,
//!   responses of 64 tokens behind 64-token contexts, best of 2 runs;
//! - the wall time of an OPD step (top-16 divergence form, 4 prompts, 32 new tokens) with
//!   each teacher, after one warm-up step.
//!
//! `cargo bench -p opd-cli --bench served_teacher` (the model from `scripts/fetch-smollm2.sh`);
//! prints a Markdown table.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use opd_cli::server::{ServeOptions, ServerState, serve};
use opd_policy::{Llama, Policy};
use opd_tasks::{ExactAnswer, Task};
use opd_teachers::{External, Remote, RemoteOptions, Request, Teacher, TeacherSupport};
use opd_trainers::prelude::Divergence;
use opd_trainers::{Objective, OpdConfig, OpdForm, SamplingConfig, TrainConfig, Trainer};

#[path = "scoring_rows.rs"]
mod scoring_rows;
use scoring_rows::{best, rows};

type A = Autodiff<Flex>;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

/// Seconds of one OPD step after a warm-up step, with `teacher`.
fn step_seconds(
    student: &Llama<A>,
    tokenizer: &opd_policy::ChatTokenizer,
    teacher: Box<dyn Teacher<A>>,
) -> (f64, f64) {
    let config = TrainConfig {
        steps: 2,
        prompts_per_step: 4,
        micro_batch: 4,
        sampling: SamplingConfig {
            max_new_tokens: 32,
            ..SamplingConfig::default()
        },
        objective: Objective::Opd(OpdConfig {
            form: OpdForm::Divergence {
                divergence: Divergence::ReverseKl,
                teacher_top_k: Some(16),
            },
            ..OpdConfig::default()
        }),
        ..TrainConfig::default()
    };
    let tasks: Vec<Task> = (0..8)
        .map(|i| {
            Task::with_answer(
                format!("What is {i} + {}?", i + 2),
                format!("{}", 2 * i + 2),
            )
        })
        .collect();
    let student = Llama::<A>::from_inner(student.valid()).map(&mut RequireGrad);
    let mut trainer = Trainer::builder(config, student, tokenizer.clone(), tasks, ExactAnswer)
        .teacher_boxed(teacher)
        .build()
        .unwrap();
    trainer.step().unwrap();
    let started = Instant::now();
    let metrics = trainer.step().unwrap();
    (started.elapsed().as_secs_f64(), metrics.seconds.teacher)
}

struct RequireGrad;

impl<B: burn::tensor::backend::Backend> burn::module::ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
        param.set_require_grad(true)
    }
}

fn main() {
    opd_policy::allocator::tune();
    let device = Default::default();
    let (student, tokenizer) =
        opd_policy::load::<A>(MODEL, &device).expect("scripts/fetch-smollm2.sh");
    let (teacher, _) = opd_policy::load::<Flex>(MODEL, &device).unwrap();
    let local = External::new(teacher.clone(), &tokenizer, &student, &tokenizer).unwrap();
    let mut options = ServeOptions::new(teacher.max_context());
    options.batch_rows = 32;
    let state = ServerState::start(teacher, &tokenizer, "smollm2", options);
    let (bound, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            bound.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, state, std::future::pending())
                .await
                .unwrap();
        });
    });
    let url = format!("http://{}", address.recv().unwrap());
    let remote =
        Remote::connect(RemoteOptions::new(&url), &tokenizer, student.vocab_size()).unwrap();
    let request = Request::new(TeacherSupport::TopK(16), 1.0).unwrap();
    println!("| batch | in process tok/s | over HTTP tok/s | HTTP / in process |");
    println!("|---|---|---|---|");
    for batch in [1, 8, 32] {
        let sequences = rows(batch, 64, 64, student.vocab_size());
        let tokens = (batch * 64) as f64;
        let here = best(|| {
            local.outputs(&student, &sequences, &request).unwrap();
        });
        let served = best(|| {
            remote.outputs(&student, &sequences, &request).unwrap();
        });
        println!(
            "| {batch} | {:.0} | {:.0} | {:.2}× |",
            tokens / here,
            tokens / served,
            here / served
        );
    }
    println!(
        "\nbytes per response token over the wire (top-16): {:.0}",
        remote.bytes_per_token().unwrap_or(0.0)
    );
    let (local_step, local_teacher) = step_seconds(&student, &tokenizer, Box::new(local));
    let (served_step, served_teacher) = step_seconds(&student, &tokenizer, Box::new(remote));
    println!("\n| OPD step (top-16) | step s | teacher phase s |");
    println!("|---|---|---|");
    println!("| teacher in process | {local_step:.2} | {local_teacher:.2} |");
    println!("| teacher over HTTP | {served_step:.2} | {served_teacher:.2} |");
}
