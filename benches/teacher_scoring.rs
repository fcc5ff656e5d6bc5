//! Teachers on SmolLM2, one measurement per process; prints one JSON line.
//!
//! - `teacher_scoring speed BATCH CONTEXT RESPONSE AUTODIFF_BATCH`: a frozen teacher scores
//!   `BATCH` responses of `RESPONSE` tokens behind `CONTEXT`-token privileged contexts
//!   (sampled-token log-probs and full logits) on the no-grad fast path, against the same
//!   forward on the autodiff model for `AUTODIFF_BATCH` of those rows (what scoring costs when
//!   the student's graph-recording model is used instead; at batch 8 × 556 tokens its
//!   activations exceed 24 GB). Best of 2 runs each; response tokens per second. With
//!   `OPD_FROZEN_PRECISION=bf16` the model's linear layers are kept in bf16
//!   (`Llama::with_frozen_precision`).
//! - `teacher_scoring memory full|lora teacher|none`: the student takes 2 AdamW steps (so its
//!   weights leave the checkpoint's), with a frozen teacher alive or not, then the teacher
//!   scores; prints the resident memory at the end and its peak. The teacher's cost is the
//!   difference between `teacher` and `none`.

use burn::backend::{Autodiff, Flex};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use opd_policy::{FusedAdamW, Llama, LoraConfig, LoraTarget, Policy};
use opd_teachers::{FrozenInitial, Request, Teacher, TeacherSupport};

#[path = "peak_rss.rs"]
mod peak_rss;
use peak_rss::{peak_rss_mb, rss_mb};

#[path = "scoring_rows.rs"]
mod scoring_rows;
use scoring_rows::{best, rows};

type A = Autodiff<Flex>;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn speed(student: &Llama<A>, batch: usize, context: usize, response: usize, autodiff_rows: usize) {
    let sequences = rows(batch, context, response, student.vocab_size());
    let teacher = FrozenInitial::new(student);
    let request = |support| Request::new(support, 1.0).unwrap();
    let sampled = best(|| {
        teacher
            .outputs(student, &sequences, &request(TeacherSupport::SampledToken))
            .unwrap();
    });
    eprintln!("fast path, sampled-token: {sampled:.2} s");
    let logits = best(|| {
        teacher
            .outputs(student, &sequences, &request(TeacherSupport::Logits))
            .unwrap();
    });
    eprintln!("fast path, full logits: {logits:.2} s");
    let device = Default::default();
    let subset = sequences.rows(0..autodiff_rows).unwrap();
    let autodiff = best(|| {
        let ids = subset.response_ids::<A>(&device).unsqueeze_dim::<3>(2);
        let z = student.response_logits(&subset).unwrap();
        log_softmax(z, 2).gather(2, ids).into_data();
    });
    eprintln!("autodiff path, {autodiff_rows} rows: {autodiff:.2} s");
    let tokens = (batch * response) as f64;
    println!(
        "{{\"batch\": {batch}, \"context\": {context}, \"response\": {response}, \
         \"fast_sampled_tok_s\": {:.1}, \"fast_logits_tok_s\": {:.1}, \"autodiff_rows\": {autodiff_rows}, \
         \"autodiff_tok_s\": {:.1}, \
         \"peak_mb\": {:.0}}}",
        tokens / sampled,
        tokens / logits,
        (autodiff_rows * response) as f64 / autodiff,
        peak_rss_mb()
    );
}

fn memory(student: Llama<A>, lora: bool, with_teacher: bool) {
    let mut student = if lora {
        student.with_lora(&LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: LoraTarget::ALL.to_vec(),
            seed: 0,
        })
    } else {
        student
    };
    let teacher = with_teacher.then(|| FrozenInitial::new(&student));
    let train = rows(1, 8, 24, student.vocab_size());
    let device = Default::default();
    let mut optimizer = FusedAdamW::new(0.9, 0.999, 1e-5, 1e-4).init::<A, Llama<A>>();
    for _ in 0..2 {
        let ids = train.response_ids::<A>(&device).unsqueeze_dim::<3>(2);
        let lp = log_softmax(student.response_logits(&train).unwrap(), 2).gather(2, ids);
        let grads = GradientsParams::from_grads(lp.sum().neg().backward(), &student);
        student = optimizer.step(1e-4, student, grads);
    }
    if let Some(teacher) = &teacher {
        let request = Request::new(TeacherSupport::SampledToken, 1.0).unwrap();
        teacher.outputs(&student, &train, &request).unwrap();
    }
    println!(
        "{{\"lora\": {lora}, \"teacher\": {with_teacher}, \"rss_mb\": {:.0}, \"peak_mb\": {:.0}}}",
        rss_mb(),
        peak_rss_mb()
    );
}

fn main() {
    opd_policy::allocator::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    let (student, _) =
        opd_policy::load::<A>(format!("{root}{MODEL}"), &Default::default()).expect("SmolLM2");
    let number = |i: usize| args[i].parse::<usize>().expect("a number");
    match args[0].as_str() {
        "speed" => {
            let student = match std::env::var("OPD_FROZEN_PRECISION") {
                Ok(p) => student.with_frozen_precision(p.parse().expect("f32 or bf16")),
                Err(_) => student,
            };
            speed(&student, number(1), number(2), number(3), number(4))
        }
        "memory" => memory(student, args[1] == "lora", args[2] == "teacher"),
        other => panic!("unknown mode {other}: speed or memory"),
    }
}
