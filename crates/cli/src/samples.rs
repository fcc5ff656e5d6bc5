//! Off-policy distillation's data: a teacher's own answers to the training questions, as
//! SFT references (the "SFT on teacher samples" arm of the quickstart and the results).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use opd_rollout::{SamplingParams, generate};
use opd_tasks::data::write_jsonl;
use opd_tasks::{Task, prompt_ids};

use crate::error::{CliError, Result};

/// The teacher at `teacher` samples answers (temperature 1, at most `max_new_tokens`) to
/// `tasks`, pass after pass with a fresh seed, until its answers hold `budget` tokens; they are
/// written to `out/teacher-samples.jsonl` as references, and its path returned.
pub fn teacher_samples<B: Backend>(
    teacher: &Path,
    tasks: &[Task],
    (budget, max_new_tokens): (u64, usize),
    out: &Path,
    device: &B::Device,
) -> Result<PathBuf> {
    let failed = |problem: String| CliError::Run {
        path: teacher.to_path_buf(),
        problem,
    };
    let (model, tokenizer) = opd_policy::load::<B>(teacher, device)?;
    let prompts = tasks
        .iter()
        .map(|t| prompt_ids(&tokenizer, &t.prompt))
        .collect::<opd_tasks::Result<Vec<_>>>()
        .map_err(|e| failed(e.to_string()))?;
    let (mut samples, mut tokens) = (Vec::new(), 0u64);
    for pass in 0.. {
        let params = SamplingParams {
            max_new_tokens,
            seed: 1000 + pass,
            ..SamplingParams::default()
        };
        let batch =
            generate(&model, &tokenizer, &prompts, &params).map_err(|e| failed(e.to_string()))?;
        for sample in batch.samples {
            if tokens >= budget {
                let path = out.join("teacher-samples.jsonl");
                write_jsonl(&path, &samples).map_err(|e| failed(e.to_string()))?;
                return Ok(path);
            }
            tokens += sample.response_ids.len() as u64;
            let task = &tasks[sample.prompt_index];
            samples.push(Task {
                prompt: task.prompt.clone(),
                reference: Some(sample.text),
                answer: task.answer.clone(),
                tests: None,
                teacher: None,
            });
        }
    }
    unreachable!("the loop returns once the budget is spent")
}
