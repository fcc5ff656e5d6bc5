//! The rows a step trains on: the student's samples (or, for SFT, the reference answers),
//! with what the environment said about each.

use opd_policy::{ChatTokenizer, Policy};
use opd_rollout::{FinishReason, SamplingParams, generate};

use crate::error::{Result, TrainError};
use crate::settings::SamplingConfig;
use opd_tasks::{Environment, Outcome, Task, prompt_ids};

/// A step's rows in prompt-major order (answer `j` of prompt `i` at `i · G + j`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct StepRows {
    /// Index of each row's task.
    pub tasks: Vec<usize>,
    /// The student's context (rendered chat prompt).
    pub contexts: Vec<Vec<u32>>,
    /// The response ids.
    pub responses: Vec<Vec<u32>>,
    /// `log π_old(ŷ_t)` at τ = 1, as the sampler reported it (empty for SFT).
    pub old: Vec<Vec<f32>>,
    /// The decoded responses.
    pub texts: Vec<String>,
    /// Whether each response hit `max_new_tokens`.
    pub truncated: Vec<bool>,
    /// The environment's verdicts.
    pub outcomes: Vec<Outcome>,
}

impl StepRows {
    /// Checks one worker's share as gathered from another process: `per_prompt` rows for
    /// each of `prompts` in order, each row's vectors consistent, every id inside `vocab`;
    /// `Err` says what is wrong.
    pub fn check_share(
        &self,
        prompts: &[usize],
        per_prompt: usize,
        vocab: usize,
    ) -> std::result::Result<(), String> {
        let n = prompts.len() * per_prompt;
        let lengths = [
            self.tasks.len(),
            self.contexts.len(),
            self.responses.len(),
            self.texts.len(),
            self.truncated.len(),
            self.outcomes.len(),
        ];
        if lengths.iter().any(|&l| l != n) || !(self.old.is_empty() || self.old.len() == n) {
            return Err(format!(
                "{lengths:?} rows where its {} prompts make {n}",
                prompts.len()
            ));
        }
        let expected = prompts
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, per_prompt));
        if !self.tasks.iter().copied().eq(expected) {
            return Err("rows of other prompts than the step's".into());
        }
        let ids = self.contexts.iter().chain(&self.responses).flatten();
        if let Some(id) = ids.copied().find(|&id| id as usize >= vocab) {
            return Err(format!("token {id} outside the {vocab}-token vocabulary"));
        }
        let mismatched = |b: &usize| {
            let old = &self.old[*b];
            !old.is_empty() && old.len() != self.responses[*b].len()
        };
        if let Some(b) = (0..self.old.len()).find(mismatched) {
            return Err(format!(
                "row {b}: log-probs of another length than its response"
            ));
        }
        Ok(())
    }

    /// The rows of `parts` one after another (each worker's share of a step, in rank order).
    pub fn concat(parts: Vec<StepRows>) -> StepRows {
        let mut all = StepRows::default();
        for part in parts {
            all.tasks.extend(part.tasks);
            all.contexts.extend(part.contexts);
            all.responses.extend(part.responses);
            all.old.extend(part.old);
            all.texts.extend(part.texts);
            all.truncated.extend(part.truncated);
            all.outcomes.extend(part.outcomes);
        }
        all
    }
}

/// `group` samples of the student (on its inner backend, no graph) for each task.
pub(crate) fn sampled<B: burn::tensor::backend::Backend>(
    student: &impl Policy<B>,
    tokenizer: &ChatTokenizer,
    tasks: &[(usize, &Task)],
    sampling: &SamplingConfig,
    group: usize,
    seed: u64,
    environment: &dyn Environment,
) -> Result<StepRows> {
    let prompts = tasks
        .iter()
        .map(|(_, task)| prompt_ids(tokenizer, &task.prompt))
        .collect::<opd_tasks::Result<Vec<_>>>()?;
    let params = SamplingParams {
        temperature: sampling.temperature,
        top_k: sampling.top_k,
        top_p: sampling.top_p,
        max_new_tokens: sampling.max_new_tokens,
        n: group,
        stop_strings: sampling.stop_strings.clone(),
        seed,
        ..SamplingParams::default()
    };
    let mut batch = generate(student, tokenizer, &prompts, &params)?;
    batch
        .samples
        .sort_by_key(|s| (s.prompt_index, s.sample_index));
    let mut rows = StepRows::default();
    for sample in batch.samples {
        let (index, task) = tasks[sample.prompt_index];
        rows.outcomes.push(environment.evaluate(task, &sample.text));
        rows.tasks.push(index);
        rows.contexts.push(prompts[sample.prompt_index].clone());
        rows.truncated
            .push(sample.finish_reason == FinishReason::Length);
        rows.responses.push(sample.response_ids);
        rows.old.push(sample.logprobs);
        rows.texts.push(sample.text);
    }
    Ok(rows)
}

/// SFT's rows: each task's reference answer followed by the end-of-turn token.
pub(crate) fn references(
    tokenizer: &ChatTokenizer,
    tasks: &[(usize, &Task)],
    environment: &dyn Environment,
) -> Result<StepRows> {
    let mut rows = StepRows::default();
    for &(index, task) in tasks {
        let reference = task.reference.as_deref().ok_or_else(|| TrainError::Task {
            index,
            problem: "SFT needs a reference answer".into(),
        })?;
        let mut response = tokenizer.encode(reference)?;
        response.extend(tokenizer.special.eos.first());
        rows.outcomes.push(environment.evaluate(task, reference));
        rows.tasks.push(index);
        rows.contexts.push(prompt_ids(tokenizer, &task.prompt)?);
        rows.responses.push(response);
        rows.old.push(Vec::new());
        rows.texts.push(reference.to_string());
        rows.truncated.push(false);
    }
    Ok(rows)
}
