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

/// How a response ends: why, how many of its tokens it keeps, and their text.
pub(crate) struct Finish {
    pub reason: FinishReason,
    /// The response keeps its first `keep` tokens (fewer than generated after a stop string).
    pub keep: usize,
    /// The kept tokens decoded without special tokens.
    pub text: String,
}

impl StopConditions<'_> {
    /// Checks a response that just grew by `response.last()`; `Some` once it ends.
    ///
    /// A stop string ends the response at the longest prefix of tokens whose text lies
    /// entirely before it, so that the ids, their log-probs and the text describe the same
    /// tokens (a token that straddles the start of the stop string is dropped with it).
    pub fn check(
        &self,
        tokenizer: &ChatTokenizer,
        prompt_len: usize,
        response: &[u32],
    ) -> Result<Option<Finish>> {
        let last = *response.last().expect("called after a token");
        let whole = |reason| -> Result<Option<Finish>> {
            Ok(Some(Finish {
                reason,
                keep: response.len(),
                text: tokenizer.decode(response, true)?,
            }))
        };
        if self.tokens.contains(&last) {
            return whole(FinishReason::StopToken(last));
        }
        if !self.strings.is_empty() {
            let text = tokenizer.decode(response, true)?;
            let found = self
                .strings
                .iter()
                .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
                .min();
            if let Some((at, stop)) = found {
                let before = &text[..at];
                // The stop string was completed by the last token: search back from there.
                for keep in (0..response.len()).rev() {
                    let kept = tokenizer.decode(&response[..keep], true)?;
                    if before.starts_with(&kept) {
                        return Ok(Some(Finish {
                            reason: FinishReason::StopString(stop.clone()),
                            keep,
                            text: kept,
                        }));
                    }
                }
            }
        }
        if response.len() >= self.max_new_tokens || prompt_len + response.len() >= self.context {
            return whole(FinishReason::Length);
        }
        Ok(None)
    }
}
