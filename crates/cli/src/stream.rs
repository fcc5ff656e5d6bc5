//! Streaming one answer to stdout as it is sampled.

use std::io::Write;

use opd_policy::ChatTokenizer;

/// Prints an answer's text as its tokens arrive, holding back what could still change: with
/// stop strings, everything from the first one on and the last `longest − 1` bytes (a stop
/// string not yet complete), at token boundaries as the sampler cuts; always a trailing
/// incomplete UTF-8 character. [`Stream::finish`] prints the rest of the final text. The first
/// write error is kept and returned by `finish`; later writes are skipped.
pub struct Stream<'t, W: Write> {
    tokenizer: &'t ChatTokenizer,
    out: W,
    ids: Vec<u32>,
    printed: String,
    stop_strings: Vec<String>,
    error: Option<std::io::Error>,
}

impl<'t, W: Write> Stream<'t, W> {
    /// A stream to `out` for answers that stop at any of `stop_strings`.
    pub fn new(tokenizer: &'t ChatTokenizer, out: W, stop_strings: &[String]) -> Self {
        Self {
            tokenizer,
            out,
            ids: Vec::new(),
            printed: String::new(),
            stop_strings: stop_strings.to_vec(),
            error: None,
        }
    }

    /// The text of the first `n` tokens.
    fn text(&self, n: usize) -> Option<String> {
        self.tokenizer.decode(&self.ids[..n], true).ok()
    }

    /// The longest text of whole tokens that no stop string can cut any more.
    fn settled(&self) -> Option<String> {
        let text = self.text(self.ids.len())?;
        if self.stop_strings.is_empty() {
            return Some(text);
        }
        let cut = self
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min();
        let hold = self.stop_strings.iter().map(String::len).max().unwrap_or(1) - 1;
        let limit = cut.unwrap_or(text.len()).saturating_sub(hold);
        (0..=self.ids.len())
            .rev()
            .filter_map(|n| self.text(n))
            .find(|t| t.len() <= limit)
    }

    /// Adds a sampled token and prints the text that can no longer change.
    pub fn push(&mut self, token: u32) {
        self.ids.push(token);
        if self.error.is_some() {
            return;
        }
        let Some(settled) = self.settled() else {
            return;
        };
        let settled = settled.trim_end_matches('\u{FFFD}');
        if let Some(new) = settled.strip_prefix(self.printed.as_str())
            && !new.is_empty()
        {
            let written = self
                .out
                .write_all(new.as_bytes())
                .and_then(|_| self.out.flush());
            match written {
                Ok(()) => self.printed.push_str(new),
                Err(e) => self.error = Some(e),
            }
        }
    }
    /// Prints what `final_text` (the answer as the sampler cut it) adds to what was printed,
    /// then a newline.
    pub fn finish(mut self, final_text: &str) -> std::io::Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
        // Printed text is always a prefix of the final answer, unless the tokenizer decoded a
        // prefix differently; then the answer is printed again in full on its own line.
        let rest = match final_text.strip_prefix(self.printed.as_str()) {
            Some(rest) => rest.to_string(),
            None => format!("\n{final_text}"),
        };
        writeln!(self.out, "{rest}")?;
        self.out.flush()
    }
}
