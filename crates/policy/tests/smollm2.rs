//! SmolLM2 end to end: the tokenizer rebuilt from GGUF metadata, and a greedy chat answer.

mod common;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use opd_policy::{Llama, tokenizer};

#[test]
fn tokenizer_from_gguf_metadata() {
    let tok = tokenizer::from_gguf(&common::smollm2()).unwrap();
    let enc = tok
        .encode("<|im_start|>user\nWhat is 2024?<|im_end|>", false)
        .unwrap();
    let ids = enc.get_ids();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    assert_eq!(*ids.last().unwrap(), 2, "<|im_end|> is one special token");
    let digits: Vec<&str> = enc
        .get_tokens()
        .iter()
        .map(String::as_str)
        .filter(|t| t.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(
        digits,
        ["2", "0", "2", "4"],
        "digits are split individually"
    );
    let text = "Paris is the capital of France. Ünïcödé → 漢字!";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}

#[test]
fn greedy_chat_answer_names_paris() {
    let file = common::smollm2();
    let tok = tokenizer::from_gguf(&file).unwrap();
    let device = Default::default();
    let (model, _) = Llama::<Flex>::from_gguf(&file, &device).unwrap();
    // SmolLM2's chat template, rendered for one user turn.
    let prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                  <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let mut ids: Vec<i64> = tok
        .encode(prompt, false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    let prompt_len = ids.len();
    for _ in 0..12 {
        let input = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(ids.clone(), [1, ids.len()]),
            &device,
        );
        let logits = model.forward(input);
        let last = logits.slice([0..1, ids.len() - 1..ids.len()]).reshape([-1]);
        let next = last.argmax(0).into_scalar() as i64;
        if next == 2 {
            break;
        }
        ids.push(next);
    }
    let answer: Vec<u32> = ids[prompt_len..].iter().map(|&i| i as u32).collect();
    let answer = tok.decode(&answer, true).unwrap();
    assert!(answer.contains("Paris"), "greedy answer: {answer:?}");
    eprintln!("greedy answer: {answer:?}");
}
