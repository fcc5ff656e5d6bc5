//! Generation on tiny random models (exact properties) and on SmolLM2 (real text).

mod common;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use opd_policy::{
    Architecture, ChatTokenizer, Llama, LlamaConfig, Message, Policy, PolicyError, SequenceBatch,
    SequenceError,
};
use opd_rollout::sampler::processed;
use opd_rollout::{FinishReason, RolloutError, SamplingParams, ScoreOptions, generate, score};

type B = Flex;

/// A tiny Llama whose vocabulary is the bytes of a small byte-level tokenizer.
fn tiny() -> (Llama<B>, ChatTokenizer) {
    let tokenizer = tokenizer();
    let vocab = tokenizer.vocab_size();
    let config = LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size: vocab,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
    };
    (Llama::init(&config, 8, &Default::default()), tokenizer)
}

/// A word-level tokenizer over 40 words; `w0` is the EOS token.
fn tokenizer() -> ChatTokenizer {
    let vocab: std::collections::HashMap<String, u32> =
        (0..40).map(|i| (format!("w{i}"), i as u32)).collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("w1".into())
        .build()
        .unwrap();
    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    inner.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    let special = opd_policy::SpecialTokens {
        bos: None,
        eos: vec![0],
        pad: Some(0),
    };
    ChatTokenizer::new(inner, special, None)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 12, 3, 7], vec![21], vec![8, 8, 30]]
}

#[test]
fn greedy_tokens_are_the_argmax_of_a_full_forward_at_every_step() {
    let (model, tok) = tiny();
    let batch = generate(&model, &tok, &prompts(), &SamplingParams::greedy(12)).unwrap();
    for sample in &batch.samples {
        let mut ids = prompts()[sample.prompt_index].clone();
        for &token in &sample.response_ids {
            let input: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            let input = Tensor::<B, 2, Int>::from_data(
                TensorData::new(input, [1, ids.len()]),
                &Default::default(),
            );
            let logits = model.logits(input, &[0]);
            let last = logits.slice([0..1, ids.len() - 1..ids.len()]).reshape([-1]);
            assert_eq!(last.argmax(0).into_scalar() as u32, token);
            ids.push(token);
        }
    }
}

#[test]
fn a_batch_samples_what_its_rows_sample_alone() {
    let (model, tok) = tiny();
    for params in [
        SamplingParams::greedy(10),
        SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            max_new_tokens: 10,
            n: 2,
            seed: 42,
            ..SamplingParams::default()
        },
    ] {
        let batch = generate(&model, &tok, &prompts(), &params).unwrap();
        for (i, prompt) in prompts().iter().enumerate() {
            let alone = generate(&model, &tok, std::slice::from_ref(prompt), &params).unwrap();
            for (j, sample) in alone.samples.iter().enumerate() {
                let in_batch = &batch.samples[i * params.n + j];
                assert_eq!(
                    in_batch.response_ids, sample.response_ids,
                    "prompt {i} sample {j}"
                );
                for (a, b) in in_batch.logprobs.iter().zip(&sample.logprobs) {
                    assert!((a - b).abs() < 1e-4);
                }
            }
        }
        let again = generate(&model, &tok, &prompts(), &params).unwrap();
        assert_eq!(again.samples, batch.samples.clone(), "seeds reproduce");
        // Rows run in successive batches of 2 sample exactly the same.
        let bounded = SamplingParams {
            max_batch: 2,
            ..params.clone()
        };
        let chunked = generate(&model, &tok, &prompts(), &bounded).unwrap();
        assert_eq!(chunked.samples, batch.samples, "max_batch 2");
    }
}

#[test]
fn recorded_log_probs_equal_the_scores_of_a_full_forward() {
    let (model, tok) = tiny();
    let params = SamplingParams {
        temperature: 0.8,
        top_k: Some(10),
        max_new_tokens: 15,
        n: 3,
        seed: 7,
        ..SamplingParams::default()
    };
    let batch = generate(&model, &tok, &prompts(), &params).unwrap();
    let sequences = batch.sequences().unwrap();
    let scores = score(
        &model,
        &sequences,
        ScoreOptions {
            micro_batch: 4,
            top_k: 3,
            ..ScoreOptions::default()
        },
    )
    .unwrap()
    .to_rows(&sequences);
    for (sample, scored) in batch.samples.iter().zip(&scores) {
        assert_eq!(sample.logprobs.len(), scored.logprobs.len());
        for (a, b) in sample.logprobs.iter().zip(&scored.logprobs) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        for (top, lp) in scored.top_k.iter().zip(&sample.sampling_logprobs) {
            assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
            assert!(*lp <= 0.0);
        }
    }
}

/// Pearson's chi-square statistic of observed counts against expected probabilities.
fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&c, &p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

#[test]
fn first_tokens_follow_the_processed_distribution() {
    let (model, tok) = tiny();
    let prompt = vec![vec![4, 17, 9]];
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![4i64, 17, 9], [1, 3]),
        &Default::default(),
    );
    let logits: Vec<f32> = model
        .logits(input, &[0])
        .slice([0..1, 2..3])
        .into_data()
        .to_vec()
        .unwrap();
    for params in [
        SamplingParams {
            temperature: 0.7,
            ..SamplingParams::default()
        },
        SamplingParams {
            top_k: Some(5),
            ..SamplingParams::default()
        },
        SamplingParams {
            top_p: 0.8,
            ..SamplingParams::default()
        },
        SamplingParams {
            min_p: 0.03,
            ..SamplingParams::default()
        },
    ] {
        let draws = 4000;
        let params = SamplingParams {
            n: draws,
            max_new_tokens: 1,
            seed: 3,
            ..params
        };
        let batch = generate(&model, &tok, &prompt, &params).unwrap();
        let (ids, weights) = processed(&logits, &params);
        assert!(ids.len() >= 3, "{params:?} keeps {} tokens", ids.len());
        let total: f64 = weights.iter().sum();
        let mut counts = vec![0usize; ids.len()];
        for sample in &batch.samples {
            let token = sample.response_ids[0];
            let k = ids.iter().position(|&id| id == token);
            counts[k.unwrap_or_else(|| panic!("{token} outside the kept set {ids:?}"))] += 1;
        }
        let probs: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let stat = chi_square(&counts, &probs);
        eprintln!("{} kept, chi-square {stat:.1}", ids.len());
        // 99.9% quantile of chi-square with df = kept − 1 (Wilson–Hilferty).
        let df = (ids.len() - 1) as f64;
        let z = 3.09;
        let bound = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
        assert!(
            stat < bound,
            "{params:?}: chi-square {stat:.1} ≥ {bound:.1} with {} kept",
            ids.len()
        );
    }
}

#[test]
fn stop_strings_spanning_tokens_and_stop_ids_end_samples() {
    let (model, tok) = tiny();
    let greedy = generate(&model, &tok, &prompts(), &SamplingParams::greedy(12)).unwrap();
    let text = &greedy.samples[0].text;
    let words: Vec<&str> = text.split(' ').collect();
    assert!(words.len() >= 3, "need a few words: {text:?}");
    // A stop string spanning the second and third generated words.
    let stop = format!("{} {}", words[1], &words[2][..2]);
    let params = SamplingParams {
        stop_strings: vec![stop.clone()],
        ..SamplingParams::greedy(12)
    };
    let batch = generate(&model, &tok, &prompts()[..1], &params).unwrap();
    let sample = &batch.samples[0];
    assert_eq!(sample.finish_reason, FinishReason::StopString(stop.clone()));
    // The ids, their log-probs and the text end before the stop string, and agree: the text
    // is the decoding of the ids, and the next greedy token starts the stop string.
    let ids = &sample.response_ids;
    let greedy_ids = &greedy.samples[0].response_ids;
    assert_eq!(ids[..], greedy_ids[..ids.len()]);
    assert_eq!(sample.logprobs.len(), ids.len());
    assert_eq!(sample.sampling_logprobs.len(), ids.len());
    assert_eq!(sample.text, tok.decode(ids, true).unwrap());
    let before = &text[..text.find(&stop).unwrap()];
    assert!(
        before.starts_with(&sample.text),
        "{:?} / {before:?}",
        sample.text
    );
    let one_more = tok.decode(&greedy_ids[..ids.len() + 1], true).unwrap();
    assert!(
        !before.starts_with(&one_more),
        "{one_more:?} lies before the stop string"
    );
    let stop_id = greedy_ids[1];
    let params = SamplingParams {
        stop_token_ids: vec![stop_id],
        ..SamplingParams::greedy(12)
    };
    let batch = generate(&model, &tok, &prompts()[..1], &params).unwrap();
    assert_eq!(
        batch.samples[0].finish_reason,
        FinishReason::StopToken(stop_id)
    );
    let first = greedy_ids.iter().position(|&t| t == stop_id).unwrap();
    assert_eq!(batch.samples[0].response_ids, greedy_ids[..=first]);
}

#[test]
fn bad_parameters_and_prompts_are_typed_errors() {
    let (model, tok) = tiny();
    let run = |prompts: &[Vec<u32>], params: SamplingParams| {
        generate(&model, &tok, prompts, &params).unwrap_err()
    };
    let ok = prompts();
    let err = run(
        &ok,
        SamplingParams {
            n: 0,
            ..SamplingParams::default()
        },
    );
    assert!(
        matches!(err, RolloutError::InvalidParameter { field: "n", .. }),
        "{err}"
    );
    for top_p in [0.0, 1.5, f64::NAN] {
        let err = run(
            &ok,
            SamplingParams {
                top_p,
                ..SamplingParams::default()
            },
        );
        assert!(
            matches!(err, RolloutError::InvalidParameter { field: "top_p", .. }),
            "{err}"
        );
    }
    let err = run(&[vec![]], SamplingParams::default());
    assert!(
        matches!(err, RolloutError::EmptyPrompt { index: 0 }),
        "{err}"
    );
    let err = run(&[vec![1], vec![3; 64]], SamplingParams::default());
    assert!(
        matches!(
            err,
            RolloutError::PromptTooLong {
                index: 1,
                len: 64,
                context: 64
            }
        ),
        "{err}"
    );
    let err = run(&[vec![1, 99]], SamplingParams::default());
    assert!(
        matches!(err, RolloutError::TokenOutOfVocabulary { id: 99, .. }),
        "{err}"
    );
    let err = SequenceBatch::new(vec![vec![1, 2]], vec![]).unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::Sequence(SequenceError::CountMismatch {
                contexts: 1,
                responses: 0
            })
        ),
        "{err}"
    );
    let batch = SequenceBatch::new(vec![vec![1, 2]], vec![vec![3, 99]]).unwrap();
    let err = score(&model, &batch, ScoreOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::Policy(PolicyError::Sequence(SequenceError::TokenOutOfVocabulary {
                row: 0,
                id: 99,
                ..
            }))
        ),
        "{err}"
    );
}

/// A model whose logits turn NaN stops with an error naming the prompt, sample and step, and
/// finish reasons print plainly.
#[test]
fn non_finite_logits_are_an_error_naming_the_step() {
    let (mut model, tok) = tiny();
    let dims = model.norm.gamma.dims();
    model.norm.gamma =
        burn::module::Param::from_tensor(Tensor::full(dims, f32::NAN, &Default::default()));
    let err = generate(&model, &tok, &prompts(), &SamplingParams::greedy(4)).unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::NonFiniteLogits {
                prompt: 0,
                sample: 0,
                step: 0
            }
        ),
        "{err}"
    );
    assert_eq!(FinishReason::StopToken(2).to_string(), "stop token 2");
    assert_eq!(FinishReason::Length.to_string(), "length");
}

/// A model with more outputs than its tokenizer has tokens (allowed at load: Qwen pads its
/// output) that samples one of the extra ids stops with an error naming it.
#[test]
fn a_token_the_tokenizer_lacks_is_an_error() {
    let (model, tok) = tiny();
    let mut config = model.config.clone();
    config.vocab_size += 8;
    config.tie_word_embeddings = false;
    let wider = Llama::<B>::init(&config, 8, &Default::default());
    // Push every logit beyond the tokenizer's 40 words up: greedy draws one of them.
    let mut bias = vec![0.0f32; config.vocab_size];
    bias[40..].iter_mut().for_each(|b| *b = 100.0);
    let mut wider = wider;
    wider.lm_head = Some(burn::nn::Linear {
        weight: burn::module::Param::from_tensor(Tensor::zeros(
            [config.hidden_size, config.vocab_size],
            &Default::default(),
        )),
        bias: Some(burn::module::Param::from_tensor(Tensor::from_floats(
            bias.as_slice(),
            &Default::default(),
        ))),
    });
    let err = generate(&wider, &tok, &prompts(), &SamplingParams::greedy(4)).unwrap_err();
    assert!(
        matches!(err, RolloutError::UnknownToken { step: 0, token, tokens: 40, .. } if token >= 40),
        "{err}"
    );
}

#[test]
fn smollm2_samples_are_well_formed_and_reproducible() {
    let path = common::smollm2_path();
    let (model, tok) = opd_policy::load::<B>(&path, &Default::default()).unwrap();
    let text = tok
        .apply_chat_template(&[Message::user("Write one sentence about the sea.")], true)
        .unwrap();
    let params = SamplingParams {
        temperature: 0.7,
        n: 8,
        max_new_tokens: 24,
        seed: 2026,
        ..SamplingParams::default()
    };
    let prompt = vec![tok.encode(&text).unwrap()];
    let batch = generate(&model, &tok, &prompt, &params).unwrap();
    assert_eq!(batch.samples.len(), 8);
    let distinct: std::collections::HashSet<&str> =
        batch.samples.iter().map(|s| s.text.as_str()).collect();
    assert!(
        distinct.len() >= 4,
        "8 samples, {} distinct",
        distinct.len()
    );
    for sample in &batch.samples {
        let words = sample.text.split_whitespace().count();
        assert!(words >= 3, "{:?}", sample.text);
        assert!(!sample.text.contains("<|im_"), "{:?}", sample.text);
        assert!(
            sample
                .logprobs
                .iter()
                .all(|lp| lp.is_finite() && *lp <= 0.0)
        );
        eprintln!("{:?}: {}", sample.finish_reason, sample.text);
    }
    let again = generate(&model, &tok, &prompt, &params).unwrap();
    assert_eq!(again.samples, batch.samples);
    eprintln!(
        "decode: {} tokens in {:.2} s",
        batch.stats.response_tokens,
        batch.stats.decode.as_secs_f64()
    );
}

/// Each response token's rank counts, over the whole vocabulary, the tokens more likely than
/// it: checked against the logits of a full forward.
#[test]
fn ranks_count_the_more_likely_tokens_of_the_whole_vocabulary() {
    let (model, tok) = tiny();
    let params = SamplingParams {
        temperature: 1.5,
        max_new_tokens: 12,
        n: 2,
        seed: 3,
        ..SamplingParams::default()
    };
    let sequences = generate(&model, &tok, &prompts(), &params)
        .unwrap()
        .sequences()
        .unwrap();
    let options = ScoreOptions {
        top_k: 2,
        ranks: true,
        ..ScoreOptions::default()
    };
    let rows = score(&model, &sequences, options)
        .unwrap()
        .to_rows(&sequences);
    let logits = model.response_logits(&sequences).unwrap();
    let [_, width, vocab] = logits.dims();
    let logits: Vec<f32> = logits.into_data().to_vec().unwrap();
    let mut outside = 0;
    for (b, (row, response)) in rows.iter().zip(sequences.responses()).enumerate() {
        assert_eq!(row.ranks.len(), response.len());
        for (t, &token) in response.iter().enumerate() {
            let z = &logits[(b * width + t) * vocab..(b * width + t + 1) * vocab];
            let expected = 1 + z.iter().filter(|&&v| v > z[token as usize]).count() as u32;
            assert_eq!(row.ranks[t], expected, "row {b}, position {t}");
            outside += usize::from(expected > 2);
        }
    }
    assert!(outside > 0, "some sampled token lies outside the top 2");
}
