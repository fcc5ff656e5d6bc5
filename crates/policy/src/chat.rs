//! Chat templates: the Jinja template a model ships with (`tokenizer_config.json`'s
//! `chat_template`, or GGUF `tokenizer.chat_template`), rendered with minijinja and Python
//! string methods (`.strip()`, `.startswith()`, …) as Hugging Face templates expect.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A turn with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An assistant turn.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// A system turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        Self::new(self.source.clone()).expect("compiled once already")
    }
}

/// `raise_exception(message)`, which Hugging Face templates call on invalid conversations.
fn raise_exception(message: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles a template.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.clone())
            .map_err(|e| PolicyError::Template(format!("{e:#}")))?;
        Ok(Self { source, env })
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins. `bos_token` and `eos_token` are available to the template.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let template = self.env.get_template("chat").expect("added in new");
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(|e| PolicyError::Template(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::{ChatTemplate, Message};

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let template = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}\
             {% endif %}[{{ m.role.upper() }}]{{ m.content.strip() }}{% endfor %}\
             {% if add_generation_prompt %}[ASSISTANT]{% endif %}",
        )
        .unwrap();
        let text = template
            .render(&[Message::user("  hi  ")], true, "<s>", "</s>")
            .unwrap();
        assert_eq!(text, "[USER]hi[ASSISTANT]");
        let err = template
            .render(&[Message::new("tool", "x")], false, "", "")
            .unwrap_err();
        assert!(err.to_string().contains("no tools"), "{err}");
    }

    #[test]
    fn a_broken_template_is_an_error() {
        let err = ChatTemplate::new("{% for m in messages %}").unwrap_err();
        assert!(err.to_string().contains("chat template"), "{err}");
    }
}
