//! A few OPSD steps of SmolLM2-135M on GSM-style problems with worked solutions, on
//! `Autodiff<Flex>`: the real run of the trainers crate (for `peer/compare_opsd_step.py`).
//! Every step prints its metrics as one JSON line (phase times, tokens/s, divergence, the
//! teacher/student top-k overlap) with the peak resident memory; the last line is the summary
//! over the steps after the first: mean seconds per phase and the shapes of a step (rows,
//! student and teacher context lengths, longest response), which the PyTorch peer replays.
//!
//! `ROWS` sets the rows per step (one micro-batch), `OUTPUT_HEAD` the trainer's `output_head`
//! (`auto`, `fused` or `formed`: the step's memory with and without the head fused with the
//! loss), and `VOCAB` replaces SmolLM2 by a model of its shape with a `VOCAB`-token
//! vocabulary and random weights (151936: Qwen3's), whose answers run to `MAX_NEW_TOKENS`.
//!
//! usage: opsd_step [STEPS] [MAX_NEW_TOKENS] [ROWS] [auto|fused|formed] [VOCAB]

use burn::backend::{Autodiff, Flex};
use opd_policy::{ChatTokenizer, Llama};
use opd_tasks::{Environment, Outcome, Task, prompt_ids};
use opd_teachers::{Conditioned, Privileged, PrivilegedTemplate};
use opd_trainers::{
    Objective, OpsdConfig, OptimizerConfig, OutputHead, SamplingConfig, StepMetrics, TrainConfig,
    Trainer,
};

#[path = "peak_rss.rs"]
mod peak_rss;
use peak_rss::peak_rss_mb;

type A = Autodiff<Flex>;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Four GSM-style problems with worked solutions ending `#### N`.
fn problems() -> Vec<Task> {
    [
        (
            "Tom has 3 boxes with 12 apples in each box. He gives away 7 apples. How many apples does he have left?",
            "3 boxes with 12 apples is 3 * 12 = 36 apples. After giving away 7 he has 36 - 7 = 29 apples.\n#### 29",
            "29",
        ),
        (
            "Pens cost $2 each. Mia buys 5 pens and pays with a $20 bill. How much change does she get?",
            "5 pens cost 5 * 2 = 10 dollars. Her change is 20 - 10 = 10 dollars.\n#### 10",
            "10",
        ),
        (
            "A train travels 60 km every hour. How far does it travel in 3 hours?",
            "In 3 hours it travels 60 * 3 = 180 km.\n#### 180",
            "180",
        ),
        (
            "Sara reads 15 pages a day. How many pages does she read in one week?",
            "A week has 7 days, so she reads 15 * 7 = 105 pages.\n#### 105",
            "105",
        ),
    ]
    .into_iter()
    .map(|(q, solution, answer)| Task {
        prompt: format!("{q} Give the final answer after ####."),
        reference: Some(solution.into()),
        answer: Some(answer.into()),
        tests: None,
        teacher: None,
    })
    .collect()
}

/// The number after the last `####`, else the last number in the answer.
struct FinalNumber;

impl Environment for FinalNumber {
    fn evaluate(&self, task: &Task, response: &str) -> Outcome {
        let tail = response.rsplit("####").next().unwrap_or(response);
        let numbers: Vec<&str> = tail
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .collect();
        let given = if response.contains("####") {
            numbers.first()
        } else {
            numbers.last()
        };
        let correct = given.copied() == task.answer.as_deref();
        Outcome {
            reward: f64::from(u8::from(correct)),
            correct,
            feedback: None,
        }
    }
}

/// `tokenizer` with special tokens `<extra_i>` up to `vocab` ids, so a random model of that
/// vocabulary can sample every id.
fn padded(tokenizer: &ChatTokenizer, vocab: usize) -> ChatTokenizer {
    let folder = tempfile::tempdir().expect("a temporary folder");
    tokenizer
        .save_hf(folder.path())
        .expect("save the tokenizer");
    let path = folder.path().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let added = json["added_tokens"].as_array_mut().expect("added tokens");
    for id in tokenizer.vocab_size()..vocab {
        added.push(serde_json::json!({
            "id": id, "content": format!("<extra_{id}>"), "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true,
        }));
    }
    std::fs::write(&path, json.to_string()).unwrap();
    ChatTokenizer::from_hf_folder(folder.path()).expect("the padded tokenizer")
}

fn main() {
    opd_policy::allocator::tune();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i).map_or(default, |a| {
            a.parse().expect("STEPS MAX_NEW_TOKENS ROWS are numbers")
        })
    };
    let (steps, max_new_tokens, rows) = (number(0, 3), number(1, 96), number(2, 2));
    let output_head: OutputHead = args.get(3).map_or(OutputHead::Auto, |mode| {
        serde_json::from_value(mode.as_str().into()).expect("auto, fused or formed")
    });
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    let (mut student, mut tokenizer) =
        opd_policy::load::<A>(format!("{root}{MODEL}"), &Default::default()).expect("SmolLM2");
    if let Some(vocab) = args.get(4) {
        let mut config = student.config.clone();
        config.vocab_size = vocab.parse().expect("VOCAB is a number");
        student = Llama::init(&config, 0, &Default::default());
        tokenizer = padded(&tokenizer, config.vocab_size);
    }
    let tasks = problems();
    let mean_len = |lens: Vec<usize>| lens.iter().sum::<usize>() / lens.len();
    let student_context = mean_len(
        tasks
            .iter()
            .map(|t| prompt_ids(&tokenizer, &t.prompt).unwrap().len())
            .collect(),
    );
    let conditioned = Conditioned {
        teacher: (),
        template: PrivilegedTemplate::default(),
        tokenizer: tokenizer.clone(),
    };
    let questions: Vec<&str> = tasks.iter().map(|t| t.prompt.as_str()).collect();
    let privileged: Vec<Privileged> = tasks
        .iter()
        .map(|t| Privileged::Reference(t.reference.clone().unwrap()))
        .collect();
    let teacher_context = mean_len(
        conditioned
            .contexts(&questions, &privileged)
            .unwrap()
            .into_iter()
            .map(|c| c.unwrap().len())
            .collect(),
    );
    let config = TrainConfig {
        steps,
        prompts_per_step: rows,
        micro_batch: rows,
        seed: 1,
        optimizer: OptimizerConfig {
            learning_rate: 1e-5,
            ..OptimizerConfig::default()
        },
        sampling: SamplingConfig {
            max_new_tokens,
            ..SamplingConfig::default()
        },
        objective: Objective::Opsd(OpsdConfig::default()),
        output_head,
        ..TrainConfig::default()
    };
    let trainer_vocab = student.config.vocab_size;
    let mut trainer = Trainer::new(config, student, tokenizer, tasks, FinalNumber).unwrap();
    let mut measured: Vec<StepMetrics> = Vec::new();
    let mut longest = 0;
    trainer
        .train(|m| {
            let mut line = serde_json::to_value(m).unwrap();
            line["peak_rss_mb"] = peak_rss_mb().into();
            println!("{line}");
            longest = longest.max(m.response_length_max);
            if m.step > 0 || steps == 1 {
                measured.push(m.clone());
            }
        })
        .unwrap();
    let mean = |f: &dyn Fn(&StepMetrics) -> f64| {
        measured.iter().map(f).sum::<f64>() / measured.len() as f64
    };
    let summary = serde_json::json!({
        "rows": rows,
        "vocab": trainer_vocab,
        "student_context": student_context,
        "teacher_context": teacher_context,
        "response": longest,
        "rollout_s": mean(&|m| m.seconds.rollout),
        "teacher_s": mean(&|m| m.seconds.teacher),
        "train_s": mean(&|m| m.seconds.train),
        "optimizer_s": mean(&|m| m.seconds.optimizer),
        "generated_tok_s": mean(&|m| m.tokens_per_second.rollout),
        "divergence": mean(&|m| m.divergence_mean.unwrap_or(f64::NAN)),
        "shared_mass_teacher": mean(&|m| m.shared_mass_teacher.unwrap_or(f64::NAN)),
        "peak_mb": peak_rss_mb(),
    });
    println!("{summary}");
}
