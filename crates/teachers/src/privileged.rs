//! Prompt-conditioned self-teachers: the teacher reads the question with privileged
//! information (a reference solution, a demonstration, feedback on an attempt) rendered
//! through a template and the model's chat template, followed by the student's exact
//! response ids.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Tensor, TensorData};
use opd_policy::{ChatTokenizer, Message, SequenceBatch, Trainable};

use crate::error::{Result, TeacherError};
use crate::output::{Request, TeacherOutput};
use crate::teacher::Teacher;

/// What the teacher is shown besides the question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privileged {
    /// A reference solution (OPSD).
    Reference(String),
    /// A demonstration of the task (SDFT).
    Demonstration(String),
    /// SDPO: a successful sibling rollout as a demonstration, the environment's feedback on
    /// the sample, either or both. With neither, the sample is masked out of the loss.
    Sdpo {
        /// A successful answer to the same question (see [`sdpo_demonstrations`]).
        demonstration: Option<String>,
        /// Feedback on this sample (compiler output, a wrong answer, …).
        feedback: Option<String>,
    },
}

/// The user-turn text of each kind of teacher prompt; `{question}`, `{solution}`,
/// `{demonstration}` and `{feedback}` are replaced. Override any field to change the wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegedTemplate {
    /// OPSD (the paper's wording): the question, the reference solution, then the instruction
    /// to solve it in one's own way.
    pub reference: String,
    /// SDFT: the question, a demonstration, then the instruction to answer in one's own words.
    pub demonstration: String,
    /// SDPO: the question; each part below follows it when present.
    pub sdpo_question: String,
    /// SDPO: the successful sibling's answer.
    pub sdpo_demonstration: String,
    /// SDPO: the feedback on this sample.
    pub sdpo_feedback: String,
    /// SDPO: the closing instruction.
    pub sdpo_instruction: String,
}

impl Default for PrivilegedTemplate {
    fn default() -> Self {
        Self {
            reference: "{question}\n\nHere is a reference solution:\n{solution}\n\nAfter \
                        understanding the reference solution, please try to solve this \
                        problem using your own approach below:"
                .into(),
            demonstration: "{question}\n\nThis is an example for a response to the \
                            question:\n{demonstration}\n\nNow answer with a response of your \
                            own."
                .into(),
            sdpo_question: "{question}".into(),
            sdpo_demonstration: "\n\nCorrect solution:\n\n{demonstration}".into(),
            sdpo_feedback: "\n\nThe following is feedback from your unsuccessful earlier \
                            attempt:\n\n{feedback}"
                .into(),
            sdpo_instruction: "\n\nCorrectly solve the original question.".into(),
        }
    }
}

impl PrivilegedTemplate {
    /// The teacher's user turn for `question` and `privileged`; `None` for an SDPO sample
    /// with neither a demonstration nor feedback.
    pub fn render(&self, question: &str, privileged: &Privileged) -> Option<String> {
        let fill = |template: &str, key: &str, value: &str| {
            template.replace("{question}", question).replace(key, value)
        };
        match privileged {
            Privileged::Reference(solution) => Some(fill(&self.reference, "{solution}", solution)),
            Privileged::Demonstration(demo) => {
                Some(fill(&self.demonstration, "{demonstration}", demo))
            }
            Privileged::Sdpo {
                demonstration: None,
                feedback: None,
            } => None,
            Privileged::Sdpo {
                demonstration,
                feedback,
            } => {
                let mut text = fill(&self.sdpo_question, "", "");
                if let Some(demo) = demonstration {
                    text += &fill(&self.sdpo_demonstration, "{demonstration}", demo);
                }
                if let Some(feedback) = feedback {
                    text += &fill(&self.sdpo_feedback, "{feedback}", feedback);
                }
                text += &self.sdpo_instruction;
                Some(text)
            }
        }
    }
}

/// SDPO's demonstration for each sample of a rollout laid out prompt-major with `group`
/// samples per prompt (sample `j` of prompt `i` at `i·group + j`): the first sample of the same
/// prompt, other than itself, whose reward reaches `success`.
pub fn sdpo_demonstrations(rewards: &[f64], group: usize, success: f64) -> Vec<Option<usize>> {
    let group = group.max(1);
    (0..rewards.len())
        .map(|i| {
            let start = i / group * group;
            (start..(start + group).min(rewards.len())).find(|&j| j != i && rewards[j] >= success)
        })
        .collect()
}

/// A prompt-conditioned self-teacher: any teacher strategy (frozen initial, EMA, …) fed the
/// question with privileged information, the student's response ids after it.
#[derive(Debug, Clone)]
pub struct Conditioned<T> {
    /// The strategy whose weights score.
    pub teacher: T,
    /// The wording of the privileged prompt.
    pub template: PrivilegedTemplate,
    /// The student's tokenizer and chat template.
    pub tokenizer: ChatTokenizer,
}

/// What a [`Conditioned`] teacher returns.
#[derive(Debug, Clone)]
pub struct ConditionedOutput<B: AutodiffBackend> {
    /// The teacher's outputs in the student's `[B, R, ·]` layout.
    pub output: TeacherOutput<B>,
    /// The loss mask `[B, R]`: the response mask, false on rows without privileged
    /// information (SDPO samples with neither a demonstration nor feedback).
    pub mask: Tensor<B, 2, Bool>,
    /// Number of rows masked out for lack of privileged information.
    pub rows_without_privilege: usize,
}

impl<T> Conditioned<T> {
    /// The teacher's context of each row: the chat template applied to the rendered user
    /// turn, with the generation prompt; `None` for a row without privileged information.
    pub fn contexts(
        &self,
        questions: &[&str],
        privileged: &[Privileged],
    ) -> Result<Vec<Option<Vec<u32>>>> {
        if questions.len() != privileged.len() {
            return Err(TeacherError::InvalidArgument {
                name: "privileged",
                value: format!(
                    "{} rows for {} questions",
                    privileged.len(),
                    questions.len()
                ),
                expected: "one entry per question",
            });
        }
        questions
            .iter()
            .zip(privileged)
            .map(|(question, privileged)| {
                let Some(turn) = self.template.render(question, privileged) else {
                    return Ok(None);
                };
                Ok(Some(
                    self.tokenizer.encode_chat(&[Message::user(turn)], true)?,
                ))
            })
            .collect()
    }

    /// The teacher's outputs for the student's `batch`, whose row `b` answers `questions[b]`
    /// with `privileged[b]` available to the teacher. Rows without privileged information keep
    /// the student's context and are masked out. A teacher context that, with its response,
    /// exceeds the model's context is an error naming the row.
    pub fn outputs<B: AutodiffBackend, M: Trainable<B>>(
        &self,
        student: &M,
        batch: &SequenceBatch,
        questions: &[&str],
        privileged: &[Privileged],
        request: &Request,
    ) -> Result<ConditionedOutput<B>>
    where
        T: Teacher<B, M>,
    {
        if questions.len() != batch.len() {
            return Err(TeacherError::InvalidArgument {
                name: "questions",
                value: format!("{} for a batch of {}", questions.len(), batch.len()),
                expected: "one question per row",
            });
        }
        let built = self.contexts(questions, privileged)?;
        let limit = student.max_context();
        let mut kept = Vec::with_capacity(batch.len());
        let mut contexts = Vec::with_capacity(batch.len());
        for (example, (context, own)) in built.into_iter().zip(batch.contexts()).enumerate() {
            kept.push(context.is_some());
            let context = context.unwrap_or_else(|| own.clone());
            let response = batch.responses()[example].len();
            if context.len() + response > limit {
                return Err(TeacherError::ContextTooLong {
                    example,
                    context: context.len(),
                    response,
                    limit,
                });
            }
            contexts.push(context);
        }
        let output = self
            .teacher
            .outputs(student, &batch.with_contexts(contexts)?, request)?;
        let width = batch.response_width();
        let mask: Vec<bool> = batch
            .response_mask_host()
            .chunks(width)
            .zip(&kept)
            .flat_map(|(row, &keep)| row.iter().map(move |&m| m && keep))
            .collect();
        let device = student.devices().into_iter().next().unwrap_or_default();
        Ok(ConditionedOutput {
            output,
            mask: Tensor::from_data(TensorData::new(mask, [batch.len(), width]), &device),
            rows_without_privilege: kept.iter().filter(|&&k| !k).count(),
        })
    }
}
