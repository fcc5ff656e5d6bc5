//! Training and evaluation data: JSONL files of [`Task`](crate::Task)s, and the built-in
//! arithmetic generator.

mod arithmetic;
mod jsonl;

pub use arithmetic::{Arithmetic, Operation};
pub use jsonl::{read_jsonl, read_jsonl_lines, write_jsonl};
