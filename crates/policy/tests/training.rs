//! The training forward: the shared (context, response) layout, gradients through the whole
//! model checked by finite differences, the tied embedding's two gradients, LoRA, a privileged
//! prefix, and SmolLM2 under autodiff on a left-padded batch.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use opd_policy::lora::LoraLinear;
use opd_policy::{
    Architecture, Llama, LoraConfig, LoraTarget, Policy, PolicyError, SequenceBatch, SequenceError,
};

type B = Flex;
type A = Autodiff<Flex>;

/// Rows of different context and response lengths (vocabulary of the tiny models: 61).
fn tiny_batch() -> SequenceBatch {
    SequenceBatch::new(
        vec![vec![3, 17, 9, 40, 2], vec![11], vec![5, 5, 60, 8]],
        vec![vec![7, 1, 33], vec![20, 21, 22, 23, 24, 25], vec![14]],
    )
    .unwrap()
}

/// `log p(y_{b,t})` at the response tokens `[B, R]`, 0 at padding (plain burn ops, an
/// independent path from the divergences crate's kernels).
fn response_log_probs<Bk: Backend, P: Policy<Bk>>(
    policy: &P,
    batch: &SequenceBatch,
) -> Tensor<Bk, 2> {
    let logits = policy.response_logits(batch).unwrap();
    let device = logits.device();
    let ids = batch.response_ids::<Bk>(&device).unsqueeze_dim::<3>(2);
    let picked = log_softmax(logits, 2).gather(2, ids).squeeze_dim::<2>(2);
    picked * batch.response_mask::<Bk>(&device).float()
}

/// Mean negative log-likelihood of the response tokens.
fn nll<Bk: Backend, P: Policy<Bk>>(policy: &P, batch: &SequenceBatch) -> Tensor<Bk, 1> {
    response_log_probs(policy, batch).sum().neg() / batch.response_tokens() as f64
}

fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

#[test]
fn the_layout_puts_contexts_left_and_responses_right_of_one_boundary() {
    let batch = tiny_batch();
    assert_eq!(
        (batch.context_width(), batch.response_width()),
        (5, 6),
        "C and R"
    );
    assert_eq!(batch.padding(), vec![0, 4, 1]);
    assert_eq!(batch.scoring_slots(), 4..10);
    assert_eq!(batch.token_slot(2), 7);
    let ids: Vec<i64> = batch
        .ids::<B>(&Default::default())
        .into_data()
        .convert::<i64>()
        .into_vec()
        .unwrap();
    #[rustfmt::skip]
    assert_eq!(ids, vec![
        3, 17, 9, 40, 2, 7, 1, 33, 0, 0, 0,
        0, 0, 0, 0, 11, 20, 21, 22, 23, 24, 25,
        0, 5, 5, 60, 8, 14, 0, 0, 0, 0, 0,
    ]);
    for (b, response) in batch.responses().iter().enumerate() {
        for (t, &id) in response.iter().enumerate() {
            assert_eq!(ids[b * batch.width() + batch.token_slot(t)], id as i64);
        }
    }
    let mask = batch.response_mask_host();
    assert_eq!(mask.iter().filter(|&&m| m).count(), 10);
    assert_eq!(&mask[..6], &[true, true, true, false, false, false]);
    // A teacher's longer contexts keep the responses and move only the boundary.
    let teacher = batch
        .with_contexts(vec![vec![1; 9], vec![2, 11], vec![4; 3]])
        .unwrap();
    assert_eq!(teacher.response_width(), 6);
    assert_eq!(teacher.scoring_slots(), 8..14);
    assert_eq!(teacher.response_mask_host(), mask);
}

#[test]
fn malformed_batches_are_typed_errors() {
    let err = |r: opd_policy::Result<SequenceBatch>| match r.unwrap_err() {
        PolicyError::Sequence(e) => e,
        other => panic!("{other}"),
    };
    assert_eq!(
        err(SequenceBatch::new(vec![vec![1]], vec![])),
        SequenceError::CountMismatch {
            contexts: 1,
            responses: 0
        }
    );
    assert_eq!(
        err(SequenceBatch::new(vec![], vec![])),
        SequenceError::EmptyBatch
    );
    assert_eq!(
        err(SequenceBatch::new(
            vec![vec![1], vec![]],
            vec![vec![2], vec![3]]
        )),
        SequenceError::EmptyContext { row: 1 }
    );
    assert_eq!(
        err(SequenceBatch::new(vec![vec![1]], vec![vec![]])),
        SequenceError::NoResponseTokens
    );
    let model = Llama::<B>::init(
        &common::tiny(Architecture::Llama, true),
        1,
        &Default::default(),
    );
    let out_of_vocab = SequenceBatch::new(vec![vec![1], vec![2]], vec![vec![3], vec![61]]).unwrap();
    let e = model.response_logits(&out_of_vocab).unwrap_err();
    assert!(
        matches!(
            e,
            PolicyError::Sequence(SequenceError::TokenOutOfVocabulary {
                row: 1,
                id: 61,
                vocab: 61
            })
        ),
        "{e}"
    );
    // One row with a long context and another with a long response overflow together.
    let wide = SequenceBatch::new(vec![vec![1; 100], vec![1]], vec![vec![2], vec![2; 40]]).unwrap();
    let e = model.response_logits(&wide).unwrap_err();
    assert!(e.to_string().contains("140 slots"), "{e}");
}

/// A privileged prefix in the teacher's context: its response logits equal a forward of
/// prefix + context + response alone, on the fast path and under autodiff.
#[test]
fn response_logits_in_a_longer_context_equal_a_forward_of_the_concatenated_ids() {
    let device = Default::default();
    let student = tiny_batch();
    let prefixes: [&[u32]; 3] = [&[50, 51], &[52, 53, 54, 55, 56, 57, 58], &[]];
    let contexts: Vec<Vec<u32>> = prefixes
        .iter()
        .zip(student.contexts())
        .map(|(p, c)| [*p, c].concat())
        .collect();
    let teacher = student.with_contexts(contexts.clone()).unwrap();
    for config in common::tiny_variants() {
        let fast = Llama::<B>::init(&config, 3, &device);
        let graph = Llama::<A>::init(&config, 3, &device);
        let batched = [
            fast.response_logits(&teacher).unwrap(),
            graph.response_logits(&teacher).unwrap().inner(),
        ];
        for (b, response) in student.responses().iter().enumerate() {
            let row: Vec<i64> = contexts[b]
                .iter()
                .chain(response)
                .map(|&id| id as i64)
                .collect();
            let len = row.len();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(row, [1, len]), &device);
            let from = contexts[b].len() - 1;
            let alone = fast.forward(ids).slice([0..1, from..from + response.len()]);
            for logits in &batched {
                let here = logits.clone().slice([b..b + 1, 0..response.len()]);
                let diff = common::max_diff(here, alone.clone());
                assert!(diff < 2e-5, "{:?} row {b}: {diff}", config.architecture);
            }
        }
    }
}

/// Every float parameter's values (visit order).
struct Values(Vec<Vec<f32>>);

impl<Bk: Backend> ModuleVisitor<Bk> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        self.0.push(host(param.val()));
    }
}

/// Every float parameter's gradient (visit order), `None` for parameters without one.
struct Grads<'a, Bk: AutodiffBackend>(&'a Bk::Gradients, Vec<Option<Vec<f32>>>);

impl<Bk: AutodiffBackend> ModuleVisitor<Bk> for Grads<'_, Bk> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        self.1.push(param.val().grad(self.0).map(host));
    }
}

/// Adds `delta` to entry `at` (flat, row-major) of float parameter number `target`.
struct Nudge {
    target: usize,
    at: usize,
    delta: f32,
    seen: usize,
}

impl<Bk: Backend> ModuleMapper<Bk> for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<Bk, D>>) -> Param<Tensor<Bk, D>> {
        self.seen += 1;
        if self.seen - 1 != self.target {
            return param;
        }
        let (id, value, mapper) = param.consume();
        let dims = value.dims();
        let mut step = vec![0.0f32; dims.iter().product()];
        step[self.at] = self.delta;
        let step = Tensor::from_data(TensorData::new(step, dims), &value.device());
        Param::from_mapped_value(id, value + step, mapper)
    }
}

/// Central differences of `loss` at a few entries of every parameter that has a gradient:
/// the entry with the largest gradient and two more drawn from `seed`. Returns the number of
/// entries checked; panics on the first mismatch.
fn check_gradients<M: Module<A> + Clone>(
    name: &str,
    model: &M,
    loss: impl Fn(&M) -> f32,
    grads: &[Option<Vec<f32>>],
    seed: u64,
) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let eps = 1e-2f32;
    let (mut checked, mut worst) = (0, 0.0f32);
    for (target, grad) in grads.iter().enumerate() {
        let Some(grad) = grad else { continue };
        let largest = (0..grad.len())
            .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
            .unwrap();
        let picks = [
            largest,
            rng.random_range(0..grad.len()),
            rng.random_range(0..grad.len()),
        ];
        for at in picks {
            let nudged = |delta| {
                loss(&model.clone().map(&mut Nudge {
                    target,
                    at,
                    delta,
                    seen: 0,
                }))
            };
            let numeric = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            let analytic = grad[at];
            let tolerance = 2e-4 + 2e-2 * analytic.abs();
            assert!(
                (numeric - analytic).abs() <= tolerance,
                "{name}: parameter {target} entry {at}: finite difference {numeric:.6e}, \
                 backward {analytic:.6e}"
            );
            worst = worst.max((numeric - analytic).abs() / tolerance);
            checked += 1;
        }
    }
    eprintln!("{name}: {checked} entries, worst error {worst:.2} of the tolerance");
    checked
}

/// Finite differences against backward for every tensor of every tiny variant (tied and
/// separate heads, Llama-3 rope scaling, q/k/v biases, q/k norms) on a left-padded batch.
#[test]
fn backward_matches_finite_differences_at_every_parameter_tensor() {
    let batch = tiny_batch();
    for config in common::tiny_variants() {
        let name = format!(
            "{:?} tied={}",
            config.architecture, config.tie_word_embeddings
        );
        let model = Llama::<A>::init(&config, 11, &Default::default());
        let gradients = nll(&model, &batch).backward();
        let mut grads = Grads::<A>(&gradients, Vec::new());
        model.visit(&mut grads);
        let grads = grads.1;
        for (i, g) in grads.iter().enumerate() {
            let g = g
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: parameter {i} has no gradient"));
            assert!(
                g.iter().any(|v| v.abs() > 1e-7),
                "{name}: parameter {i} has a zero gradient"
            );
        }
        let loss = |m: &Llama<A>| nll(m, &batch).into_scalar();
        let checked = check_gradients(&name, &model, loss, &grads, 5);
        assert_eq!(checked, 3 * grads.len());
    }
}

/// With tied embeddings, `E` is both the lookup table and the output head: its gradient is the
/// sum of both, which an untied copy (separate leaves with the same values) shows apart.
#[test]
fn the_tied_embedding_accumulates_the_lookup_and_the_head_gradient() {
    let batch = tiny_batch();
    let tied = Llama::<A>::init(
        &common::tiny(Architecture::Llama, true),
        12,
        &Default::default(),
    );
    let embedding = tied.embed_tokens.weight.val().detach();
    let mut untied = tied.clone();
    untied.embed_tokens.weight = Param::from_tensor(embedding.clone());
    untied.lm_head = Some(Linear {
        weight: Param::from_tensor(embedding.transpose().detach()),
        bias: None,
    });
    untied.config.tie_word_embeddings = false;
    let loss_tied = nll(&tied, &batch);
    let loss_untied = nll(&untied, &batch);
    assert_eq!(
        loss_tied.clone().into_scalar(),
        loss_untied.clone().into_scalar()
    );
    let grads_tied = loss_tied.backward();
    let grads_untied = loss_untied.backward();
    let total = tied.embed_tokens.weight.grad(&grads_tied).unwrap();
    let lookup = untied.embed_tokens.weight.grad(&grads_untied).unwrap();
    let head = untied
        .lm_head
        .as_ref()
        .unwrap()
        .weight
        .grad(&grads_untied)
        .unwrap()
        .transpose();
    let diff = common::max_diff(total, lookup.clone() + head.clone());
    assert!(diff < 1e-6, "tied gradient ≠ lookup + head: {diff}");
    // Both parts are there: token 59 is never an input (head only), token 3 is.
    let row = |g: Tensor<B, 2>, id: usize| {
        g.slice(burn::tensor::s![id..id + 1, ..])
            .abs()
            .max()
            .into_scalar()
    };
    assert_eq!(row(lookup.clone(), 59), 0.0);
    assert!(row(head.clone(), 59) > 1e-6);
    assert!(row(lookup, 3) > 1e-6 && row(head, 3) > 1e-6);
}

fn adapted_linears<Bk: Backend>(model: &mut Llama<Bk>) -> Vec<&mut LoraLinear<Bk>> {
    model
        .layers
        .iter_mut()
        .flat_map(|block| {
            let (attn, mlp) = (&mut block.self_attn, &mut block.mlp);
            [
                &mut attn.q_proj,
                &mut attn.k_proj,
                &mut attn.v_proj,
                &mut attn.o_proj,
                &mut mlp.gate_proj,
                &mut mlp.up_proj,
                &mut mlp.down_proj,
            ]
        })
        .collect()
}

/// With LoRA only the adapters receive gradients, and those match finite differences (with
/// `B ≠ 0`, so that `A`'s gradient is not trivially zero).
#[test]
fn with_lora_only_adapters_receive_gradients_and_they_are_exact() {
    let batch = tiny_batch();
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: LoraTarget::ALL.to_vec(),
        seed: 0,
    };
    let config = common::tiny(Architecture::Qwen2, false);
    let mut model = Llama::<A>::init(&config, 13, &Default::default()).with_lora(&lora);
    for linear in adapted_linears(&mut model) {
        let adapter = linear.lora.as_mut().unwrap();
        let dims = adapter.b.dims();
        adapter.b = Param::from_tensor(Tensor::random(
            dims,
            Distribution::Uniform(-0.3, 0.3),
            &Default::default(),
        ));
    }
    let gradients = nll(&model, &batch).backward();
    let mut grads = Grads::<A>(&gradients, Vec::new());
    model.visit(&mut grads);
    let grads = grads.1;
    let mut values = Values(Vec::new());
    model.visit(&mut values);
    let adapters = 2 * 7 * config.num_hidden_layers;
    assert_eq!(grads.iter().filter(|g| g.is_some()).count(), adapters);
    for linear in adapted_linears(&mut model) {
        let adapter = linear.lora.as_ref().unwrap();
        assert!(adapter.a.grad(&gradients).is_some() && adapter.b.grad(&gradients).is_some());
        assert!(linear.base.weight.grad(&gradients).is_none());
    }
    assert!(model.embed_tokens.weight.grad(&gradients).is_none());
    let loss = |m: &Llama<A>| nll(m, &batch).into_scalar();
    assert_eq!(
        check_gradients("LoRA", &model, loss, &grads, 6),
        3 * adapters
    );
    // The frozen base did not move: its values are those of a fresh model.
    let fresh = Llama::<A>::init(&config, 13, &Default::default());
    assert_eq!(
        host(fresh.layers[1].mlp.down_proj.base.weight.val()),
        host(model.layers[1].mlp.down_proj.base.weight.val())
    );
}

/// SmolLM2 under autodiff: a left-padded batch of mixed context and response lengths gives
/// every row the response log-probs it has alone, and backward reaches every tensor.
#[test]
fn smollm2_trains_on_a_padded_batch_whose_rows_score_as_if_alone() {
    let path = common::smollm2_path();
    let (model, tokenizer) = opd_policy::load::<A>(&path, &Default::default()).unwrap();
    let encode = |text: &str| tokenizer.encode(text).unwrap();
    let batch = SequenceBatch::new(
        vec![
            encode("Question: what is the capital of France?\nAnswer:"),
            encode("2 + 2 ="),
            encode("The quick brown fox jumps over the lazy dog. Then it"),
        ],
        vec![
            encode(" Paris, a city on the Seine."),
            encode(" 4"),
            encode(" runs into the forest and hides behind a tall old tree."),
        ],
    )
    .unwrap();
    let together = response_log_probs(&model, &batch);
    let values = host(together.clone());
    let width = batch.response_width();
    let mut worst = 0.0f32;
    for b in 0..batch.len() {
        let alone = batch.rows(b..b + 1).unwrap();
        let expected = host(response_log_probs(&model, &alone));
        for (t, e) in expected.iter().enumerate() {
            worst = worst.max((values[b * width + t] - e).abs());
        }
    }
    eprintln!("padded batch vs rows alone: max |Δ log p| = {worst:.2e}");
    assert!(worst < 1e-4, "max |Δ log p| = {worst}");
    let loss = together.clone().sum().neg() / batch.response_tokens() as f64;
    let gradients = loss.backward();
    let mut grads = Grads::<A>(&gradients, Vec::new());
    model.visit(&mut grads);
    assert_eq!(grads.1.len(), 2 + 9 * model.layers.len());
    for (i, g) in grads.1.iter().enumerate() {
        let g = g
            .as_ref()
            .unwrap_or_else(|| panic!("parameter {i}: no gradient"));
        assert!(g.iter().all(|v| v.is_finite()), "parameter {i}: non-finite");
        assert!(g.iter().any(|v| *v != 0.0), "parameter {i}: zero gradient");
    }
    // The no-grad copy runs the fast kernels on the same weights and agrees.
    let fast = response_log_probs(&model.valid(), &batch);
    let diff = common::max_diff(fast, together.inner());
    assert!(diff < 1e-3, "fast path vs autodiff path: {diff}");
}
