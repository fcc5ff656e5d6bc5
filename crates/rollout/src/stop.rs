//! When a sample ends: a stop token, a stop string in its text (also one that spans tokens),
//! or its length.

use opd_policy::ChatTokenizer;

use crate::batch::FinishReason;
use crate::error::Result;

/// The stop conditions of one rollout.
pub(crate) struct StopConditions<'a> {
    /// EOS and the extra stop ids.
    pub tokens: Vec<u32>,
    /// Stop strings.
    pub strings: &'a [String],
    /// Most tokens per response.
    pub max_new_tokens: usize,
    /// Most tokens per prompt + response.
    pub context: usize,
}

impl StopConditions<'_> {
    /// Checks a response that just grew by `response.last()`. Returns the finish reason and
    /// the text (decoded without special tokens, cut before a stop string) once it ends.
    pub fn check(
        &self,
        tokenizer: &ChatTokenizer,
        prompt_len: usize,
        response: &[u32],
    ) -> Result<Option<(FinishReason, String)>> {
        let last = *response.last().expect("called after a token");
        let decode = || tokenizer.decode(response, true);
        if self.tokens.contains(&last) {
            return Ok(Some((FinishReason::StopToken(last), decode()?)));
        }
        if !self.strings.is_empty() {
            let text = decode()?;
            let found = self
                .strings
                .iter()
                .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
                .min();
            if let Some((at, stop)) = found {
                return Ok(Some((
                    FinishReason::StopString(stop.clone()),
                    text[..at].to_string(),
                )));
            }
        }
        if response.len() >= self.max_new_tokens || prompt_len + response.len() >= self.context {
            return Ok(Some((FinishReason::Length, decode()?)));
        }
        Ok(None)
    }
}
