//! # opd-tasks
//!
//! What a model is trained and evaluated on, and how its answers are graded:
//!
//! - [`Task`]: one problem, one row of a JSONL file (`{"prompt", "reference", "answer",
//!   "tests"}`), read and written by [`data`], or generated ([`data::Arithmetic`]);
//! - [`Environment`]: grades an answer into an [`Outcome`] (reward, correctness, feedback):
//!   [`ExactAnswer`], [`MathAnswer`] (the final number), [`RustTests`] (compiles the answer
//!   and runs the task's tests in a sandbox with time, memory and output limits);
//! - [`evaluate`]: a model's accuracy on held-out tasks.
//!
//! The trainers draw their prompts from tasks and their rewards and feedback from an
//! environment; nothing here records a graph.

mod code;
pub mod data;
mod error;
mod evaluate;
mod math;
mod sandbox;
mod task;

pub use code::{RustTests, rust_code};
pub use error::{Result, TaskError};
pub use evaluate::{Evaluation, evaluate, prompt_ids};
pub use math::{MathAnswer, final_number};
pub use task::{Environment, ExactAnswer, Outcome, Task};
