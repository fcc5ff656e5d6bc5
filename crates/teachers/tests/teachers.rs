//! Every teacher strategy on tiny models (exact properties) and the prompt-conditioned teacher
//! on SmolLM2 (a reference solution raises the answer's log-prob).

#[path = "../../../tests/support/smollm2.rs"]
mod smollm2;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData};
use opd_divergences::{DistillationLoss, Divergence, DivergenceOptions};
use opd_policy::gguf::GgufFile;
use opd_policy::{
    Architecture, ChatTokenizer, Llama, LlamaConfig, LoraConfig, LoraTarget, Policy, SequenceBatch,
    SpecialTokens,
};
use opd_teachers::{
    Conditioned, Current, Ema, EmaRate, External, FrozenInitial, Privileged, PrivilegedTemplate,
    Request, Teacher, TeacherError, TeacherOutput, TeacherSupport, TrustRegion,
};
use smollm2::smollm2_path;

type A = Autodiff<Flex>;

fn config(vocab: usize, context: usize) -> LlamaConfig {
    LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size: vocab,
        hidden_size: 24,
        intermediate_size: 40,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: context,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
    }
}

fn tiny(seed: u64) -> Llama<A> {
    Llama::init(&config(61, 128), seed, &Default::default())
}

/// Student rows of different context and response lengths (vocabulary 61).
fn batch() -> SequenceBatch {
    SequenceBatch::new(
        vec![vec![3, 17, 9, 40, 2], vec![11], vec![5, 5, 60, 8]],
        vec![vec![7, 1, 33], vec![20, 21, 22, 23, 24, 25], vec![14]],
    )
    .unwrap()
}

/// The same responses behind privileged prefixes of different lengths.
fn privileged_batch() -> SequenceBatch {
    let prefixes: [&[u32]; 3] = [&[50, 51], &[52, 53, 54, 55, 56], &[57]];
    let b = batch();
    let contexts = prefixes
        .iter()
        .zip(b.contexts())
        .map(|(p, c)| [*p, c].concat())
        .collect();
    b.with_contexts(contexts).unwrap()
}

fn full() -> Request {
    Request::new(TeacherSupport::Logits, 1.0).unwrap()
}

fn logits(out: TeacherOutput<A>) -> Tensor<A, 3> {
    match out {
        TeacherOutput::Distribution {
            target: opd_divergences::TeacherTarget::Logits(logits),
            ..
        } => logits,
        other => panic!("expected logits, got {other:?}"),
    }
}

fn host<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn max_diff(a: Tensor<A, 3>, b: Tensor<A, 3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Mean NLL of the responses: a loss for real optimizer steps.
fn nll(model: &Llama<A>, batch: &SequenceBatch) -> Tensor<A, 1> {
    let device = Default::default();
    let ids = batch.response_ids::<A>(&device).unsqueeze_dim::<3>(2);
    let lp = log_softmax(model.response_logits(batch).unwrap(), 2)
        .gather(2, ids)
        .squeeze_dim::<2>(2);
    (lp * batch.response_mask::<A>(&device).float()).sum().neg() / batch.response_tokens() as f64
}

/// `steps` AdamW steps of `model` on the NLL of `batch`, calling `after` after each.
fn train(mut model: Llama<A>, steps: usize, mut after: impl FnMut(&Llama<A>)) -> Llama<A> {
    let mut optimizer = AdamWConfig::new().init::<A, Llama<A>>();
    for _ in 0..steps {
        let grads = nll(&model, &batch()).backward();
        let grads = GradientsParams::from_grads(grads, &model);
        model = optimizer.step(1e-2, model, grads);
        after(&model);
    }
    model
}

#[test]
fn trust_region_interpolates_between_the_frozen_and_the_current_teacher() {
    let start = tiny(1);
    let now = tiny(2);
    let b = privileged_batch();
    let reference = logits(
        FrozenInitial::new(&start)
            .outputs(&now, &b, &full())
            .unwrap(),
    );
    let current = logits(Current.outputs(&now, &b, &full()).unwrap());
    assert!(max_diff(reference.clone(), current.clone()) > 1e-2);
    for alpha in [0.0, 0.3, 1.0] {
        let teacher = TrustRegion::new(&start, alpha).unwrap();
        let out = logits(teacher.outputs(&now, &b, &full()).unwrap());
        let expected = reference.clone() + (current.clone() - reference.clone()).mul_scalar(alpha);
        assert!(max_diff(out, expected.clone()) < 1e-5, "α = {alpha}");
        // As hidden states: both models' states side by side against both heads.
        let request = Request {
            hidden_states: true,
            ..full()
        };
        match teacher.outputs(&now, &b, &request).unwrap() {
            TeacherOutput::Distribution {
                target: target @ opd_divergences::TeacherTarget::Hidden { .. },
                ..
            } => {
                let formed = target.logits().unwrap();
                assert!(max_diff(formed, expected) < 1e-5, "α = {alpha}, hidden");
            }
            other => panic!("expected hidden states, got {other:?}"),
        }
    }
    assert!(matches!(
        TrustRegion::new(&start, 1.5),
        Err(TeacherError::InvalidArgument { name: "alpha", .. })
    ));
}

#[test]
fn ema_after_k_real_steps_equals_the_closed_form() {
    let eta = 0.2;
    let student = tiny(3);
    let mut teacher = Ema::new(&student, EmaRate::new(eta).unwrap());
    let weight = |m: &Llama<A>| host(m.layers[1].mlp.up_proj.base.weight.val());
    let mut history = vec![weight(&student)];
    let student = train(student, 4, |m| {
        teacher.after_step(m).unwrap();
        history.push(weight(m));
    });
    // θ_T = (1 − η)^k θ_0 + Σ_{j=1..k} η (1 − η)^{k−j} θ_j
    let k = history.len() - 1;
    let expected: Vec<f64> = (0..history[0].len())
        .map(|i| {
            (1.0 - eta).powi(k as i32) * history[0][i] as f64
                + (1..=k)
                    .map(|j| eta * (1.0 - eta).powi((k - j) as i32) * history[j][i] as f64)
                    .sum::<f64>()
        })
        .collect();
    let got = host(teacher.model().layers[1].mlp.up_proj.base.weight.val());
    let worst = got
        .iter()
        .zip(&expected)
        .map(|(g, e)| (*g as f64 - e).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "EMA off the closed form by {worst}");
    // The teacher scores with those weights and lags the student.
    let lagging = logits(teacher.outputs(&student, &batch(), &full()).unwrap());
    let current = logits(Current.outputs(&student, &batch(), &full()).unwrap());
    assert!(max_diff(lagging, current) > 1e-3);
}

#[test]
fn a_frozen_teacher_does_not_move_under_real_optimizer_steps() {
    let student = tiny(4);
    let teacher = FrozenInitial::new(&student);
    assert!(teacher.is_snapshot());
    let before = logits(Current.outputs(&student, &batch(), &full()).unwrap());
    let student = train(student, 3, |_| {});
    let moved = logits(Current.outputs(&student, &batch(), &full()).unwrap());
    assert!(
        max_diff(moved, before.clone()) > 1e-2,
        "the student trained"
    );
    let frozen = logits(teacher.outputs(&student, &batch(), &full()).unwrap());
    assert_eq!(max_diff(frozen, before), 0.0);

    // With LoRA the frozen teacher is the base model (adapters off), with no snapshot.
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: LoraTarget::ALL.to_vec(),
        seed: 0,
    };
    let base = tiny(5);
    let base_logits = logits(Current.outputs(&base, &batch(), &full()).unwrap());
    let student = base.with_lora(&lora);
    let teacher = FrozenInitial::new(&student);
    assert!(!teacher.is_snapshot());
    let student = train(student, 3, |_| {});
    let adapted = logits(Current.outputs(&student, &batch(), &full()).unwrap());
    assert!(
        max_diff(adapted, base_logits.clone()) > 1e-3,
        "the adapters trained"
    );
    let frozen = logits(teacher.outputs(&student, &batch(), &full()).unwrap());
    assert_eq!(max_diff(frozen, base_logits), 0.0);
}

/// The current teacher shares the student's weights, yet the loss's gradient is the one of a
/// constant teacher: nothing flows through the teacher's side.
#[test]
fn gradients_reach_only_the_student_when_the_teacher_shares_its_weights() {
    let student = tiny(6);
    let device = Default::default();
    let out = logits(
        Current
            .outputs(&student, &privileged_batch(), &full())
            .unwrap(),
    );
    assert!(!out.is_require_grad());
    let constant = Tensor::<A, 3>::from_data(out.to_data(), &device);
    let loss = DistillationLoss::new(DivergenceOptions::new(Divergence::ReverseKl));
    let mask = batch().response_mask::<A>(&device);
    let grad_of = |teacher: Tensor<A, 3>| {
        let student_logits = student.response_logits(&batch()).unwrap();
        let value = loss
            .forward(
                student_logits,
                opd_divergences::TeacherTarget::Logits(teacher),
                mask.clone(),
            )
            .unwrap()
            .loss;
        let grads = value.backward();
        host(
            student.layers[0]
                .self_attn
                .q_proj
                .base
                .weight
                .grad(&grads)
                .unwrap(),
        )
    };
    let (shared, fixed) = (grad_of(out), grad_of(constant));
    assert!(shared.iter().any(|g| g.abs() > 1e-7));
    assert_eq!(shared, fixed);
}

/// Top-k and sampled-token outputs are the full distribution's, at the requested temperature.
#[test]
fn top_k_and_sampled_token_outputs_agree_with_the_full_one() {
    let student = tiny(7);
    let teacher = TrustRegion::new(&tiny(8), 0.5).unwrap();
    let b = privileged_batch();
    let tau = 0.7;
    let request = |support| Request::new(support, tau).unwrap();
    let full = logits(
        teacher
            .outputs(&student, &b, &request(TeacherSupport::Logits))
            .unwrap(),
    );
    let log_p = host(log_softmax(full.div_scalar(tau), 2));
    let vocab = 61;
    let width = b.response_width();
    let sampled = teacher
        .outputs(&student, &b, &request(TeacherSupport::SampledToken))
        .unwrap()
        .into_token_log_probs(tau)
        .unwrap();
    let sampled = host(sampled);
    let (ids, top) = match teacher
        .outputs(&student, &b, &request(TeacherSupport::TopK(5)))
        .unwrap()
    {
        TeacherOutput::Distribution {
            target: opd_divergences::TeacherTarget::TopK { ids, log_probs },
            ..
        } => (
            ids.into_data().convert::<i64>().into_vec::<i64>().unwrap(),
            host(log_probs),
        ),
        other => panic!("{other:?}"),
    };
    for (row, response) in b.responses().iter().enumerate() {
        for (t, &token) in response.iter().enumerate() {
            let p = row * width + t;
            let dist = &log_p[p * vocab..(p + 1) * vocab];
            assert!((sampled[p] - dist[token as usize]).abs() < 1e-5);
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &c| dist[c].total_cmp(&dist[a]));
            for j in 0..5 {
                assert_eq!(ids[p * 5 + j] as usize, order[j]);
                assert!((top[p * 5 + j] - dist[order[j]]).abs() < 1e-5);
            }
        }
    }
    // The loss must use the teacher's temperature.
    let out = teacher
        .outputs(&student, &b, &request(TeacherSupport::TopK(5)))
        .unwrap();
    assert!(matches!(
        out.into_target(1.0),
        Err(TeacherError::TemperatureMismatch { .. })
    ));
}

/// A word-level tokenizer `w0 … w{n−1}`, with `w{at}` renamed `x{at}`.
fn words(n: usize, renamed: Option<usize>) -> ChatTokenizer {
    let vocab: Vec<(String, u32)> = (0..n)
        .map(|i| {
            let name = if Some(i) == renamed { "x" } else { "w" };
            (format!("{name}{i}"), i as u32)
        })
        .collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("w1".into())
        .build()
        .unwrap();
    let special = SpecialTokens {
        bos: None,
        eos: vec![0],
        pad: Some(0),
    };
    ChatTokenizer::new(tokenizers::Tokenizer::new(model), special, None)
}

#[test]
fn an_external_teacher_with_another_vocabulary_is_refused() {
    let student = tiny(9);
    let device = Default::default();
    let teacher_model = |vocab| Llama::<Flex>::init(&config(vocab, 128), 10, &device);
    let ok = External::new(
        teacher_model(61),
        &words(61, None),
        &student,
        &words(61, None),
    );
    assert!(ok.is_ok());
    let err = External::new(
        teacher_model(61),
        &words(61, Some(7)),
        &student,
        &words(61, None),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("61 tokens") && text.contains("token 7") && text.contains("x7"),
        "{text}"
    );
    let err = External::new(
        teacher_model(64),
        &words(64, None),
        &student,
        &words(61, None),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TeacherError::VocabularyMismatch {
                teacher: 64,
                student: 61,
                first_difference: None
            }
        ),
        "{err}"
    );
}

fn smollm2_tokenizer() -> ChatTokenizer {
    ChatTokenizer::from_gguf(&GgufFile::open(smollm2_path()).unwrap()).unwrap()
}

/// The prompt-conditioned teacher's outputs equal a forward of its context + the response
/// alone, for rows of different privileged and response lengths; a row without privileged
/// information is masked; an over-long context is an error naming the row.
#[test]
fn conditioned_outputs_equal_a_forward_of_the_concatenated_ids() {
    let tokenizer = smollm2_tokenizer();
    let student = Llama::<A>::init(&config(49_152, 512), 11, &Default::default());
    let conditioned = Conditioned {
        teacher: FrozenInitial::new(&student),
        template: PrivilegedTemplate::default(),
        tokenizer: tokenizer.clone(),
    };
    let questions = ["What is 2 + 3?", "Name a colour.", "Sort 3 1 2.", "Say hi."];
    let privileged = vec![
        Privileged::Reference("2 + 3 = 5. #### 5".into()),
        Privileged::Demonstration("Blue.".into()),
        Privileged::Sdpo {
            demonstration: None,
            feedback: Some("You printed 3 2 1: the order is reversed.".into()),
        },
        Privileged::Sdpo {
            demonstration: None,
            feedback: None,
        },
    ];
    let encode = |t: &str| tokenizer.encode(t).unwrap();
    let student_contexts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            let text = tokenizer
                .apply_chat_template(&[opd_policy::Message::user(*q)], true)
                .unwrap();
            encode(&text)
        })
        .collect();
    let b = SequenceBatch::new(
        student_contexts.clone(),
        vec![
            encode("It is 5."),
            encode("Red"),
            encode("1 2 3, sorted ascending."),
            encode("Hi!"),
        ],
    )
    .unwrap();
    let out = conditioned
        .outputs(&student, &b, &questions, &privileged, &full())
        .unwrap();
    assert_eq!(out.rows_without_privilege, 1);
    let mask: Vec<bool> = out.mask.clone().into_data().into_vec().unwrap();
    let width = b.response_width();
    assert!(mask[3 * width..].iter().all(|m| !m));
    assert_eq!(&mask[..width], &b.response_mask_host()[..width]);
    let all = logits(out.output);
    let contexts = conditioned.contexts(&questions, &privileged).unwrap();
    let inner = student.valid();
    for (row, context) in contexts.iter().enumerate().take(3) {
        let context = context.as_ref().unwrap();
        assert!(context.len() > student_contexts[row].len() + 5);
        let response = &b.responses()[row];
        let ids: Vec<i64> = context.iter().chain(response).map(|&i| i as i64).collect();
        let len = ids.len();
        let alone = inner
            .forward(Tensor::from_data(
                TensorData::new(ids, [1, len]),
                &Default::default(),
            ))
            .slice([0..1, context.len() - 1..len - 1]);
        let here = all.clone().slice([row..row + 1, 0..response.len()]).inner();
        let diff: f32 = (here - alone).abs().max().into_scalar();
        assert!(diff < 2e-5, "row {row}: {diff}");
    }
    // A long reference solution overflows a 512-token model on row 1.
    let mut long = privileged.clone();
    long[1] = Privileged::Demonstration("blue ".repeat(600));
    let err = conditioned
        .outputs(&student, &b, &questions, &long, &full())
        .unwrap_err();
    assert!(
        matches!(err, TeacherError::ContextTooLong { example: 1, .. }),
        "{err}"
    );
}

#[test]
fn sdpo_demonstrations_are_the_first_successful_sibling_other_than_the_sample() {
    let rewards = [
        0.0, 1.0, 1.0, 0.0, /* second prompt */ 0.0, 0.0, 0.0, 1.0,
    ];
    let demos = opd_teachers::privileged::sdpo_demonstrations(&rewards, 4, 1.0);
    assert_eq!(
        demos,
        vec![
            Some(1),
            Some(2),
            Some(1),
            Some(1),
            Some(7),
            Some(7),
            Some(7),
            None
        ]
    );
}

/// On SmolLM2, with the worked solution of a word problem in its context, the frozen
/// self-teacher gives the answer's tokens a much higher log-prob than the student does.
#[test]
fn smollm2_teacher_with_the_reference_solution_knows_the_answer() {
    let (student, tokenizer) = opd_policy::load::<A>(smollm2_path(), &Default::default()).unwrap();
    let question = "A crate holds 23 bottles. How many bottles are in 17 crates?";
    let solution =
        "Each crate holds 23 bottles, so 17 crates hold 17 × 23 = 391 bottles.\n#### 391";
    let context = tokenizer
        .apply_chat_template(&[opd_policy::Message::user(question)], true)
        .unwrap();
    let response = tokenizer
        .encode("There are 391 bottles in 17 crates.")
        .unwrap();
    // The answer's digits: the first three digit tokens of the response.
    let answer: Vec<usize> = response
        .iter()
        .enumerate()
        .filter(|&(_, &id)| {
            let text = tokenizer.decode(&[id], true).unwrap();
            text.trim().chars().all(|c| c.is_ascii_digit()) && !text.trim().is_empty()
        })
        .map(|(t, _)| t)
        .take(3)
        .collect();
    assert_eq!(answer.len(), 3);
    let b = SequenceBatch::new(vec![tokenizer.encode(&context).unwrap()], vec![response]).unwrap();
    let request = Request::new(TeacherSupport::SampledToken, 1.0).unwrap();
    let student_lp = host(
        Current
            .outputs(&student, &b, &request)
            .unwrap()
            .into_token_log_probs(1.0)
            .unwrap(),
    );
    let conditioned = Conditioned {
        teacher: FrozenInitial::new(&student),
        template: PrivilegedTemplate::default(),
        tokenizer: tokenizer.clone(),
    };
    let out = conditioned
        .outputs(
            &student,
            &b,
            &[question],
            &[Privileged::Reference(solution.into())],
            &request,
        )
        .unwrap();
    let teacher_lp = host(out.output.into_token_log_probs(1.0).unwrap());
    let sum = |lp: &[f32]| answer.iter().map(|&t| lp[t] as f64).sum::<f64>();
    let (s, t) = (sum(&student_lp), sum(&teacher_lp));
    eprintln!("log p(\"391\"): student {s:.2}, teacher with the solution {t:.2}");
    // Measured: student −15.55, teacher −1.85.
    assert!(t > s + 8.0, "teacher {t:.2} vs student {s:.2}");
}
