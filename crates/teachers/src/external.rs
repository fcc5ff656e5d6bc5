//! An external teacher: another model with the student's tokenizer (OPD).

use burn::tensor::backend::{AutodiffBackend, Backend};
use opd_policy::{ChatTokenizer, Policy, SequenceBatch, Trainable};

use crate::error::{Result, TeacherError};
use crate::output::{Request, TeacherOutput};
use crate::teacher::{Teacher, TeacherScores, respond};

/// **External** teacher: another model, `θ_T` fixed, scoring the student's tokens (OPD). It
/// must share the student's vocabulary token for token, since it scores the student's ids.
/// `T` is the teacher's model on the student's inner (no-grad) backend: any [`Policy`], of
/// the student's family or not.
#[derive(Debug, Clone)]
pub struct External<T> {
    model: T,
}

impl<T> External<T> {
    /// The teacher `model` with its tokenizer, checked against the student's: a different
    /// vocabulary size or any differing token is an error naming both sizes and the first
    /// differing token; different special tokens (BOS, EOS, padding) are a warning.
    pub fn new<I: Backend, S: Backend>(
        model: T,
        tokenizer: &ChatTokenizer,
        student: &impl Policy<S>,
        student_tokenizer: &ChatTokenizer,
    ) -> Result<Self>
    where
        T: Policy<I>,
    {
        let (teacher_size, student_size) = (model.vocab_size(), student.vocab_size());
        let token = |t: &ChatTokenizer, id: u32| t.id_to_token(id).unwrap_or_default();
        let first_difference = (0..teacher_size.min(student_size) as u32)
            .find(|&id| token(tokenizer, id) != token(student_tokenizer, id))
            .map(|id| (id, token(tokenizer, id), token(student_tokenizer, id)));
        if teacher_size != student_size || first_difference.is_some() {
            return Err(TeacherError::VocabularyMismatch {
                teacher: teacher_size,
                student: student_size,
                first_difference,
            });
        }
        if tokenizer.special != student_tokenizer.special {
            tracing::warn!(
                "the teacher's special tokens {:?} differ from the student's {:?}; it scores \
                 the student's ids with the student's chat template",
                tokenizer.special,
                student_tokenizer.special
            );
        }
        Ok(Self { model })
    }
}

impl<B: AutodiffBackend, M: Trainable<B>, T: Policy<B::InnerBackend>> Teacher<B, M>
    for External<T>
{
    fn outputs(
        &self,
        _student: &M,
        batch: &SequenceBatch,
        request: &Request,
    ) -> Result<TeacherOutput<B>> {
        respond(batch, request, |rows| TeacherScores::of(&self.model, rows))
    }
}
