//! The vLLM side of the remote teacher: a completions answer with `prompt_logprobs`. The
//! fixture holds every field vLLM's server sends (`CompletionResponse`,
//! `CompletionResponseChoice`, `UsageInfo`, `Logprob` in `vllm/entrypoints/openai/`, serialised
//! with its nulls, as `model_dump` does): token ids as JSON keys, each `{logprob, rank,
//! decoded_token}`, `null` for the first prompt token, the prompt's own token beside the top `k`
//! with its true rank, the one generated token of `max_tokens = 1` in `text` and `usage`. vLLM
//! cannot run here: the values are those of a made-up prompt. `opd serve`'s own answer is checked
//! against the same fields in the CLI's tests.

use opd_teachers::remote::protocol::Sequence;
use opd_teachers::remote::vllm::{self, CompletionResponse, Prompt};
use proptest::prelude::Strategy as _;

fn answer() -> CompletionResponse {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vllm_completion_prompt_logprobs.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_vllm_answer_gives_each_response_tokens_log_prob_and_top_k() {
    let answer = answer();
    // Prompt 0 is context [151644, 785] + response [4226, 374, 220]: its first response token
    // is scored at prompt position 2.
    let first = Sequence {
        context: vec![151644, 785],
        response: vec![4226, 374, 220],
    };
    let scored = vllm::scored(&answer.choices[0], &first, 2).unwrap();
    assert_eq!(scored.logprobs, [-0.3307, -0.0113, -0.6821]);
    assert_eq!(scored.top_ids, [[4226, 1102], [374, 572], [220, 18]]);
    assert_eq!(scored.top_logprobs[2], [-0.6821, -1.3752]);
    // Without a top-k, the sampled token's log-prob alone; a token outside the top k (785, rank
    // 231) is still found by its id.
    let from_one = Sequence {
        context: vec![151644],
        response: vec![785, 4226],
    };
    let scored = vllm::scored(&answer.choices[0], &from_one, 0).unwrap();
    assert_eq!(scored.logprobs, [-7.2512, -0.3307]);
    assert!(scored.top_ids.is_empty());
    // Ranks, not key order, decide the top-k order.
    let second = Sequence {
        context: vec![1],
        response: vec![17, 10],
    };
    let scored = vllm::scored(&answer.choices[1], &second, 2).unwrap();
    assert_eq!(scored.top_ids[1], [15, 10]);
    assert_eq!(scored.logprobs, [-0.1005, -1.6094]);
}

#[test]
fn an_answer_missing_what_was_asked_is_refused() {
    let answer = answer();
    // A top-3 was not returned (the server's --max-logprobs was lower, or the answer is cut).
    let sequence = Sequence {
        context: vec![151644, 785],
        response: vec![4226],
    };
    assert!(vllm::scored(&answer.choices[0], &sequence, 3).is_none());
    // A response token the position does not hold.
    let other = Sequence {
        context: vec![151644, 785],
        response: vec![9999],
    };
    assert!(vllm::scored(&answer.choices[0], &other, 0).is_none());
    // Longer than the prompt that was scored.
    let long = Sequence {
        context: vec![1],
        response: vec![17, 10, 3],
    };
    assert!(vllm::scored(&answer.choices[1], &long, 0).is_none());
}

#[test]
fn the_request_concatenates_context_and_response() {
    let request = vllm::request(
        "m",
        &[Sequence {
            context: vec![1, 2],
            response: vec![3],
        }],
        5,
    );
    assert_eq!(request.prompt, Prompt::Many(vec![vec![1, 2, 3]]));
    assert_eq!(
        (request.max_tokens, request.prompt_logprobs),
        (Some(1), Some(5))
    );
    let json = serde_json::to_value(&request).unwrap();
    assert_eq!(json["echo"], true);
    assert_eq!(json["prompt"][0][2], 3);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(39),
        ..Default::default()
    })]

    /// Any `prompt_logprobs` a server sends (positions missing or `null`, ids that are not
    /// numbers, ranks absent, repeated or out of order) gives scores of the asked-for sizes,
    /// or none: never a panic.
    #[test]
    fn any_prompt_logprobs_give_scores_of_the_asked_sizes_or_none(
        positions in proptest::collection::vec(
            proptest::option::weighted(0.9, proptest::collection::btree_map(
                proptest::prop_oneof![
                    4 => (0u32..8).prop_map(|id| id.to_string()),
                    1 => "\\PC{0,4}",
                ],
                (proptest::prelude::any::<f32>(), proptest::option::weighted(0.9, 1usize..6)),
                0..6,
            )),
            0..7,
        ),
        top_k in 0usize..4,
    ) {
        let prompt_logprobs = positions
            .into_iter()
            .map(|p| {
                p.map(|entries| {
                    entries
                        .into_iter()
                        .map(|(id, (logprob, rank))| {
                            (id, vllm::PromptLogprob { logprob, rank, decoded_token: None })
                        })
                        .collect()
                })
            })
            .collect();
        let choice = vllm::Choice {
            index: 0,
            text: String::new(),
            logprobs: None,
            finish_reason: None,
            stop_reason: None,
            token_ids: None,
            prompt_logprobs,
            prompt_token_ids: None,
        };
        let sequence = Sequence { context: vec![1, 2], response: vec![3, 4, 5] };
        if let Some(scored) = vllm::scored(&choice, &sequence, top_k) {
            proptest::prop_assert_eq!(scored.logprobs.len(), 3);
            let rows = if top_k == 0 { 0 } else { 3 };
            proptest::prop_assert_eq!(scored.top_ids.len(), rows);
            proptest::prop_assert!(scored.top_ids.iter().all(|r| r.len() == top_k));
            proptest::prop_assert!(scored.top_logprobs.iter().all(|r| r.len() == top_k));
        }
    }
}
