//! A character-level tokenizer, for models trained from scratch on small alphabets.

use std::collections::HashMap;

use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::chat::ChatTemplate;
use crate::error::{PolicyError, Result};
use crate::tokenizer::{ChatTokenizer, SpecialTokens};

/// The end-of-sequence token of a character tokenizer: id 0.
pub const CHARACTER_EOS: &str = "<eos>";

impl ChatTokenizer {
    /// One token per character of `alphabet` (ids `1..=n` in order), `<eos>` as id 0 (end of
    /// answer and padding), and `chat_template` as the chat template. A character outside the
    /// alphabet encodes as the alphabet's first character. The vocabulary has
    /// `alphabet.chars().count() + 1` tokens.
    pub fn characters(alphabet: &str, chat_template: &str) -> Result<Self> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            PolicyError::Tokenizer(format!("character tokenizer: {what}: {e}"))
        };
        let chars: Vec<char> = alphabet.chars().collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(c) = chars.iter().find(|c| !seen.insert(**c)) {
            return Err(err("alphabet", &format!("{c:?} appears twice")));
        }
        let first = chars
            .first()
            .ok_or_else(|| err("alphabet", &"it is empty"))?;
        let mut vocab: HashMap<String, u32> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32 + 1))
            .collect();
        vocab.insert(CHARACTER_EOS.into(), 0);
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token(first.to_string())
            .build()
            .map_err(|e| err("vocabulary", &e))?;
        let mut inner = Tokenizer::new(model);
        let split = Split::new(
            SplitPattern::Regex(".".into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| err("pre-tokenizer", &e))?;
        inner.with_pre_tokenizer(Some(split));
        inner.with_decoder(Some(Fuse::new()));
        inner
            .add_special_tokens([AddedToken::from(CHARACTER_EOS, true)])
            .map_err(|e| err("special tokens", &e))?;
        Ok(Self {
            inner,
            special: SpecialTokens {
                bos: None,
                eos: vec![0],
                pad: Some(0),
            },
            chat_template: Some(ChatTemplate::new(chat_template)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn one_token_per_character_and_the_template_applies() {
        let tok = ChatTokenizer::characters("0123456789+=", "{{ messages[0].content }}=").unwrap();
        assert_eq!(tok.encode("12+3").unwrap(), vec![2, 3, 11, 4]);
        assert_eq!(tok.decode(&[2, 3, 0], true).unwrap(), "12");
        let text = tok
            .apply_chat_template(&[Message::user("1+1")], true)
            .unwrap();
        assert_eq!(text, "1+1=");
        assert!(ChatTokenizer::characters("aa", "").is_err());
        assert!(ChatTokenizer::characters("", "").is_err());
    }
}
