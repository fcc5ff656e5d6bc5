//! Real model files with one byte changed at a random offset (the SmolLM2 GGUF file, and the
//! Hugging Face folder opd exports from it): loading and a short greedy generation either
//! succeed with finite logits or return an error. Never a panic, never garbage without a word.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use burn::backend::Flex;
use opd_policy::gguf::GgufFile;
use opd_policy::{ChatTokenizer, Llama, Message, SaveDtype};
use opd_rollout::{SamplingParams, generate};
use proptest::prelude::*;

type B = Flex;

/// Loads nothing more than a model and tokenizer, then answers two greedy tokens: `Ok` when
/// everything succeeded (the rollout refuses non-finite logits), an error message otherwise.
fn answer(model: Llama<B>, tokenizer: &ChatTokenizer) -> Result<(), String> {
    let prompt = tokenizer
        .encode_chat(&[Message::user("Hi")], true)
        .map_err(|e| e.to_string())?;
    let batch = generate(&model, tokenizer, &[prompt], &SamplingParams::greedy(2))
        .map_err(|e| e.to_string())?;
    assert_eq!(batch.samples.len(), 1);
    Ok(())
}

/// How many mutated files answered and how many were errors (printed with `--nocapture`).
#[derive(Default)]
struct Outcomes {
    answered: std::cell::Cell<usize>,
    errors: std::cell::RefCell<Vec<String>>,
}

impl Outcomes {
    fn count(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.answered.set(self.answered.get() + 1),
            Err(e) => self.errors.borrow_mut().push(e),
        }
    }

    fn report(&self, what: &str) {
        let errors = self.errors.borrow();
        eprintln!(
            "{what}: {} mutations answered, {} were errors",
            self.answered.get(),
            errors.len()
        );
        for e in errors.iter() {
            eprintln!("  {e}");
        }
    }
}

fn from_gguf(path: &Path, bytes: Vec<u8>) -> Result<(), String> {
    let file = GgufFile::parse(path, bytes).map_err(|e| e.to_string())?;
    let model = Llama::<B>::from_gguf(&file, &Default::default()).map_err(|e| e.to_string())?;
    let tokenizer = ChatTokenizer::from_gguf(&file).map_err(|e| e.to_string())?;
    answer(model, &tokenizer)
}

/// An offset into a file of `len` bytes: half in the first 2 % (headers, metadata, the
/// tokenizer), half anywhere (mostly weights).
fn offset(len: usize) -> impl Strategy<Value = usize> {
    prop_oneof![0..len / 50, 0..len]
}

#[test]
fn a_mutated_gguf_file_loads_and_answers_or_is_an_error() {
    let path = common::smollm2_path();
    let original = std::fs::read(&path).unwrap();
    from_gguf(&path, original.clone()).expect("the unmodified file answers");
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let outcomes = Outcomes::default();
    proptest!(config, |(at in offset(original.len()), byte in any::<u8>())| {
        let mut bytes = original.clone();
        bytes[at] = byte;
        // The property is that this returns, with either outcome.
        outcomes.count(from_gguf(&path, bytes));
    });
    outcomes.report("GGUF");
}

#[test]
fn a_mutated_hugging_face_folder_loads_and_answers_or_is_an_error() {
    let folder = tempfile::tempdir().unwrap();
    let gguf = GgufFile::open(common::smollm2_path()).unwrap();
    let model = Llama::<B>::from_gguf(&gguf, &Default::default()).unwrap();
    let tokenizer = ChatTokenizer::from_gguf(&gguf).unwrap();
    opd_policy::save(&model, &tokenizer, folder.path(), SaveDtype::Bf16).unwrap();
    let load = || {
        let (model, tokenizer) =
            opd_policy::load::<B>(folder.path(), &Default::default()).map_err(|e| e.to_string())?;
        answer(model, &tokenizer)
    };
    load().expect("the unmodified folder answers");
    let files = ["model.safetensors", "config.json", "tokenizer.json"];
    let lengths: Vec<usize> = files
        .iter()
        .map(|f| std::fs::metadata(folder.path().join(f)).unwrap().len() as usize)
        .collect();
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mutation =
        (0..files.len()).prop_flat_map(move |f| (Just(f), offset(lengths[f]), any::<u8>()));
    let outcomes = Outcomes::default();
    proptest!(config, |((f, at, byte) in mutation)| {
        // One byte changed in place, and put back after the case.
        let path = folder.path().join(files[f]);
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut old = [0u8];
        file.seek(SeekFrom::Start(at as u64)).unwrap();
        std::io::Read::read_exact(&mut file, &mut old).unwrap();
        let write = |file: &mut std::fs::File, value: u8| {
            file.seek(SeekFrom::Start(at as u64)).unwrap();
            file.write_all(&[value]).unwrap();
        };
        write(&mut file, byte);
        outcomes.count(load());
        write(&mut file, old[0]);
    });
    outcomes.report("Hugging Face folder");
}
