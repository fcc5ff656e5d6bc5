//! What one training step needs, in one `use`: the trainer and its configs, the model and its
//! tokenizer, tasks and their grading, teachers, and the backend bound.
//!
//! One OPD step of a tiny random student against a tiny random teacher (reverse KL over the
//! full vocabulary), through this module alone:
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::module::AutodiffModule;
//! use opd_trainers::prelude::*;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let device = Default::default();
//!     // One token per character; the chat template writes the question, then `=`.
//!     let tokenizer = ChatTokenizer::characters(
//!         "0123456789+",
//!         "{% for m in messages %}{{ m.content }}{% endfor %}\
//!          {% if add_generation_prompt %}={% endif %}",
//!     )?;
//!     let model = LlamaConfig::tiny(tokenizer.vocab_size());
//!     let student = Llama::<Autodiff<Flex>>::init(&model, 1, &device);
//!     let teacher = Llama::<Autodiff<Flex>>::init(&model, 2, &device).valid();
//!     let teacher = External::new(teacher, &tokenizer, &student, &tokenizer)?;
//!     let tasks: Vec<Task> = (0..4)
//!         .map(|i| Task {
//!             prompt: format!("{i}+{i}"),
//!             answer: Some((2 * i).to_string()),
//!             ..Task::default()
//!         })
//!         .collect();
//!     let mut config = TrainConfig {
//!         steps: 1,
//!         prompts_per_step: 4,
//!         objective: OpdConfig {
//!             form: OpdForm::divergence(),
//!             ..OpdConfig::default()
//!         }
//!         .into(),
//!         ..TrainConfig::default()
//!     };
//!     config.sampling.max_new_tokens = 4;
//!     let mut trainer = Trainer::builder(config, student, tokenizer, tasks, ExactAnswer)
//!         .teacher(teacher)
//!         .build()?;
//!     trainer.train(|step| assert!(step.loss.is_finite() && step.loss >= 0.0))?;
//!     Ok(())
//! }
//! ```

pub use opd_divergences::{Divergence, Reduction, TrainingBackend};
pub use opd_policy::{ChatTokenizer, Llama, LlamaConfig, LoraConfig, LoraTarget, Trainable, load};
pub use opd_tasks::{Environment, ExactAnswer, MathAnswer, Outcome, Task};
pub use opd_teachers::{External, Teacher};

pub use crate::{
    GrpoConfig, Objective, OpdConfig, OpdForm, OpsdConfig, OptimizerConfig, SamplingConfig,
    SdftConfig, SdpoConfig, SftConfig, StepMetrics, TeacherWeights, TrainConfig, Trainer,
    TrainerBuilder,
};
