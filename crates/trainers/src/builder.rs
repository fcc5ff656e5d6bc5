//! [`TrainerBuilder`]: a trainer's teachers and privileged template, and the checks that
//! refuse a trainer that could not run.

use opd_divergences::TrainingBackend;
use opd_policy::{ChatTokenizer, Llama, Trainable};
use opd_tasks::{Environment, Task};
use opd_teachers::{PrivilegedTemplate, Teacher};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::method::Parts;
use crate::parallel::Replica;
use crate::trainer::Trainer;

/// Builds a [`Trainer`]: the teacher and the privileged template are set here, and
/// [`TrainerBuilder::build`] refuses a trainer that could not run.
pub struct TrainerBuilder<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    config: TrainConfig,
    student: M,
    tokenizer: ChatTokenizer,
    tasks: Vec<Task>,
    environment: Box<dyn Environment>,
    teachers: Vec<(String, Box<dyn Teacher<B, M>>)>,
    template: PrivilegedTemplate,
    replica: Option<Replica<B::InnerBackend>>,
}

impl<B: TrainingBackend, M: Trainable<B>> TrainerBuilder<B, M> {
    /// A builder with no teacher and the default template ([`Trainer::builder`]).
    pub(crate) fn new(
        config: TrainConfig,
        student: M,
        tokenizer: ChatTokenizer,
        tasks: Vec<Task>,
        environment: Box<dyn Environment>,
    ) -> Self {
        Self {
            config,
            student,
            tokenizer,
            tasks,
            environment,
            teachers: Vec::new(),
            template: PrivilegedTemplate::default(),
            replica: None,
        }
    }

    /// The teacher: OPD's teacher model (an [`opd_teachers::External`] model, or any
    /// strategy); for OPSD, SDFT and SDPO, the model that reads the privileged context in
    /// place of the configured self-teacher. SFT and GRPO refuse one.
    pub fn teacher(self, teacher: impl Teacher<B, M> + 'static) -> Self {
        self.teacher_boxed(Box::new(teacher))
    }

    /// [`Self::teacher`] for a teacher chosen at run time: the run's one teacher, named
    /// `teacher`.
    pub fn teacher_boxed(mut self, teacher: Box<dyn Teacher<B, M>>) -> Self {
        self.teachers = vec![("teacher".into(), teacher)];
        self
    }

    /// One more OPD teacher, `name`d: each task is scored by the teacher its `teacher` field
    /// names, or by the first one added (multi-teacher distillation, as verl's MOPD and
    /// Tinker's multi-teacher recipe do).
    pub fn named_teacher(
        mut self,
        name: impl Into<String>,
        teacher: Box<dyn Teacher<B, M>>,
    ) -> Self {
        self.teachers.push((name.into(), teacher));
        self
    }

    /// The wording of the self-teacher's privileged prompt.
    pub fn template(mut self, template: PrivilegedTemplate) -> Self {
        self.template = template;
        self
    }

    /// This trainer is one worker of a data-parallel run: its steps are shared with the
    /// other workers (which must be built from the same config, tasks and weights) and equal
    /// the step one worker takes on the whole batch (see [`crate::parallel`]).
    pub fn replica(mut self, replica: Replica<B::InnerBackend>) -> Self {
        self.replica = Some(replica);
        self
    }

    /// The trainer; an error for an invalid config, no tasks, a task the method cannot use
    /// (naming it), or a teacher the method cannot run without (OPD) or with (SFT, GRPO).
    pub fn build(self) -> Result<Trainer<B, M>> {
        let config = self.config;
        config.validate()?;
        if self.tasks.is_empty() {
            return Err(TrainError::Config {
                field: "tasks",
                value: "0 tasks".into(),
                expected: "at least one task",
            });
        }
        let routed = config.objective.settings().needs_teacher_model();
        if let Some((index, task)) = self
            .tasks
            .iter()
            .enumerate()
            .find(|(_, t)| t.teacher.is_some() && !routed)
        {
            return Err(TrainError::Task {
                index,
                problem: format!(
                    "names teacher `{}`, but {} has no teacher model to route it to",
                    task.teacher.as_deref().unwrap_or_default(),
                    config.objective.name()
                ),
            });
        }
        let parts = Parts {
            student: &self.student,
            tokenizer: &self.tokenizer,
            teachers: self.teachers,
            template: self.template,
            tasks: &self.tasks,
        };
        let method = config.objective.method(parts)?;
        for (index, task) in self.tasks.iter().enumerate() {
            if let Some(problem) = method.check_task(task) {
                return Err(TrainError::Task { index, problem });
            }
        }
        Ok(Trainer::assemble(
            config,
            self.student,
            self.tokenizer,
            method,
            self.environment,
            self.tasks,
            self.replica,
        ))
    }
}

impl<B: TrainingBackend, M: Trainable<B>> Trainer<B, M> {
    /// A builder of a trainer of `student` (its trainable parameters: all, or only LoRA
    /// adapters) on `tasks`, graded by `environment`.
    pub fn builder(
        config: TrainConfig,
        student: M,
        tokenizer: ChatTokenizer,
        tasks: Vec<Task>,
        environment: impl Environment + 'static,
    ) -> TrainerBuilder<B, M> {
        TrainerBuilder::new(config, student, tokenizer, tasks, Box::new(environment))
    }
}
