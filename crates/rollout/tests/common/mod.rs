//! Where the tests find SmolLM2.

#[path = "../../../../tests/support/smollm2.rs"]
mod smollm2;
pub use smollm2::smollm2_path;
