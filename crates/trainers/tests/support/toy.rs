//! A toy world for training tests: a character-level tokenizer, a tiny Llama, a digit mapping
//! to learn, and a base model that has learned to copy an answer it is shown.

#![allow(dead_code)]

use std::sync::OnceLock;

use burn::backend::{Autodiff, Flex};

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::tensor::{Tensor, backend::Backend};
use opd_policy::{ChatTokenizer, Llama, LlamaConfig, Trainable};
use opd_rollout::{SamplingParams, ScoreOptions, score};
use opd_tasks::{Environment, Outcome, Task, evaluate};
use opd_teachers::PrivilegedTemplate;
use opd_trainers::{Objective, OptimizerConfig, SftConfig, TrainConfig, Trainer};

pub type A = Autodiff<Flex>;

/// `<eos>` is id 0; then the characters.
const CHARS: &str = "0123456789|=:; abcdefghijklmnopqrstuvwxyz,.";

/// One token per character; the chat template writes the user turn and then `=`.
pub fn tokenizer() -> ChatTokenizer {
    ChatTokenizer::characters(
        CHARS,
        "{% for m in messages %}{{ m.content }}{% endfor %}\
         {% if add_generation_prompt %}={% endif %}",
    )
    .unwrap()
}

pub fn config() -> LlamaConfig {
    LlamaConfig {
        max_position_embeddings: 48,
        ..LlamaConfig::tiny(CHARS.len() + 1)
    }
}

/// The function to learn: digit `d` ↦ `(3d + 1) mod 10`.
pub fn mapped(d: usize) -> usize {
    (3 * d + 1) % 10
}

/// The ten questions of the mapping task, with their answers as references.
pub fn mapping_tasks() -> Vec<Task> {
    (0..10)
        .map(|d| Task::with_answer(d.to_string(), mapped(d).to_string()))
        .collect()
}

/// The privileged prompts of the toy: the question, `|`, then what the teacher may see.
pub fn template() -> PrivilegedTemplate {
    PrivilegedTemplate {
        reference: "{question}|{solution}".into(),
        demonstration: "{question}|{demonstration}".into(),
        sdpo_question: "{question}".into(),
        sdpo_demonstration: "|{demonstration}".into(),
        sdpo_feedback: "|{feedback}".into(),
        sdpo_instruction: String::new(),
    }
}

/// Reward 1 for the right digit; a wrong answer's feedback is the right digit.
#[derive(Debug, Clone, Copy)]
pub struct Revealing;

impl Environment for Revealing {
    fn evaluate(&self, task: &Task, response: &str) -> Outcome {
        let expected = task.answer.clone().unwrap_or_default();
        let correct = response.trim() == expected;
        Outcome {
            reward: f64::from(u8::from(correct)),
            correct,
            feedback: (!correct).then_some(expected),
        }
    }
}

/// A small fast configuration for toy runs.
pub fn toy_config(objective: Objective, steps: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        steps,
        prompts_per_step: 10,
        micro_batch: 16,
        seed: 7,
        optimizer: OptimizerConfig {
            learning_rate: lr,
            warmup_steps: 2,
            min_lr_ratio: 0.5,
            ..OptimizerConfig::default()
        },
        sampling: opd_trainers::SamplingConfig {
            max_new_tokens: 4,
            ..Default::default()
        },
        objective,
        ..TrainConfig::default()
    }
}

/// The copy base: trained by SFT (with the trainer itself) to answer `x|y=` with `y`,
/// `x|y|y=` with `y`, and `x=` with a random digit, so it knows nothing of [`mapped`] but
/// can read an answer from its context. Trained once per test binary; every call returns the
/// weights as a model of its own (see [`trainable`]).
pub fn copy_base() -> Llama<A> {
    static BASE: OnceLock<Llama<Flex>> = OnceLock::new();
    trainable(BASE.get_or_init(|| {
        let mut tasks = Vec::new();
        for x in 0..10 {
            for y in 0..10 {
                tasks.push(Task::with_answer(format!("{x}|{y}"), y.to_string()));
                tasks.push(Task::with_answer(format!("{x}|{y}|{y}"), y.to_string()));
                tasks.push(Task::with_answer(
                    x.to_string(),
                    ((x * 7 + y) % 10).to_string(),
                ));
            }
        }
        let mut run = toy_config(Objective::Sft(SftConfig::default()), 150, 1e-2);
        run.prompts_per_step = 32;
        run.micro_batch = 32;
        let student = Llama::<A>::init(&config(), 11, &Default::default());
        let mut trainer = Trainer::new(run, student, tokenizer(), tasks, Revealing).unwrap();
        trainer.train(|_| {}).unwrap();
        trainer.into_student().valid()
    }))
}

/// The weights of `inner` as a trainable autodiff model whose parameters are leaves of its own.
/// Clones of one autodiff model share their parameters' graph nodes, and burn 0.21's autodiff
/// graph deadlocks when two threads train such clones at once (lock order between
/// `GraphLocator::select` and `GraphCleaner::init`): tests running in parallel must not.
pub fn trainable(inner: &Llama<Flex>) -> Llama<A> {
    struct RequireGrad;
    impl<B: Backend> ModuleMapper<B> for RequireGrad {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.set_require_grad(true)
        }
    }
    Llama::<A>::from_inner(inner.clone()).map(&mut RequireGrad)
}

/// A teacher that knows the mapping: the copy base after SFT on it.
pub fn mapping_teacher() -> Llama<A> {
    let config = toy_config(Objective::Sft(SftConfig::default()), 40, 1e-2);
    let mut trainer =
        Trainer::new(config, copy_base(), tokenizer(), mapping_tasks(), Revealing).unwrap();
    trainer.train(|_| {}).unwrap();
    trainer.into_student()
}

/// Accuracy on the mapping task: `n` samples per question at temperature 1.
pub fn accuracy(model: &impl Trainable<A>, n: usize, seed: u64) -> f64 {
    let params = SamplingParams {
        n,
        max_new_tokens: 4,
        seed,
        ..SamplingParams::default()
    };
    evaluate(
        &model.valid(),
        &tokenizer(),
        &Revealing,
        &mapping_tasks(),
        &params,
    )
    .unwrap()
    .accuracy
}

/// Mean NLL per token of the tasks' references (with the end token) under `model`.
pub fn nll(model: &Llama<A>, tasks: &[Task]) -> f64 {
    let tok = tokenizer();
    let contexts = tasks
        .iter()
        .map(|t| opd_tasks::prompt_ids(&tok, &t.prompt).unwrap())
        .collect();
    let responses = tasks
        .iter()
        .map(|t| {
            let mut ids = tok.encode(t.reference.as_deref().unwrap()).unwrap();
            ids.push(0);
            ids
        })
        .collect();
    let batch = opd_policy::SequenceBatch::new(contexts, responses).unwrap();
    let scores = score(&model.valid(), &batch, ScoreOptions::default()).unwrap();
    let rows = scores.to_rows(&batch);
    let (sum, count) = rows.iter().fold((0.0, 0), |(s, c), r| {
        (
            s - r.logprobs.iter().map(|&l| l as f64).sum::<f64>(),
            c + r.logprobs.len(),
        )
    });
    sum / count as f64
}

/// `KL(p_S ‖ p_T)` at the first answer position of `tasks`, in float64 from both models' full
/// distributions (independent of the trainer's metrics).
pub fn answer_reverse_kl(
    student: &impl Trainable<A>,
    teacher: &impl Trainable<A>,
    tasks: &[opd_tasks::Task],
) -> f64 {
    use burn::backend::Flex;
    use burn::tensor::{Int, Tensor, TensorData, s};
    use opd_policy::Policy;
    let tok = tokenizer();
    fn last(model: &impl Trainable<A>, ids: &[u32]) -> Vec<f64> {
        let input = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [1, ids.len()],
            ),
            &Default::default(),
        );
        let v: Vec<f64> = model
            .valid()
            .logits(input, &[0])
            .slice(s![.., ids.len() - 1, ..])
            .into_data()
            .convert::<f64>()
            .into_vec()
            .unwrap();
        let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + v.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
        v.iter().map(|z| z - lse).collect()
    }
    let kls: Vec<f64> = tasks
        .iter()
        .map(|task| {
            let ids = opd_tasks::prompt_ids(&tok, &task.prompt).unwrap();
            let (s, t) = (last(student, &ids), last(teacher, &ids));
            s.iter()
                .zip(&t)
                .map(|(ls, lt)| ls.exp() * (ls - lt))
                .sum::<f64>()
        })
        .collect();
    kls.iter().sum::<f64>() / kls.len() as f64
}

/// Every parameter's values, in visiting order.
pub fn weights(model: &Llama<A>) -> Vec<Vec<f32>> {
    struct All(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor<A> for All {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<A, D>>,
        ) {
            self.0.push(param.val().into_data().to_vec().unwrap());
        }
    }
    let mut all = All(Vec::new());
    model.visit(&mut all);
    all.0
}
