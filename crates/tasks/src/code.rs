//! The Rust-code environment: an answer's code compiled with the task's tests and run.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};
use crate::sandbox::{Finished, Limits, run_limited};
use crate::task::{Environment, Outcome, Task};

/// Most characters of compiler or test output kept as feedback.
const FEEDBACK_CHARS: usize = 2000;

/// Grades Rust answers by the task's tests: the code of the answer ([`rust_code`]) and the
/// task's `tests` (a `#[cfg(test)]` module) are written to a temporary directory, compiled
/// with `rustc --edition E --test` (the standard library only, nothing downloaded) and run
/// without network (on Linux). Reward 1 when every test passes, else 0. The child processes
/// run under limits: compile and test time, the test binary's address space and output; a
/// submission that hangs,
/// crashes or floods its output is a reward of 0, never a hung trainer. Feedback (SDPO's
/// privileged context) is the compiler's errors or the failing tests' output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RustTests {
    /// Rust edition the code is compiled as. Default 2024.
    pub edition: u16,
    /// Seconds the compiler may take. Default 60.
    pub compile_seconds: f64,
    /// Seconds the tests may take. Default 10.
    pub test_seconds: f64,
    /// Address space of the test binary, in MiB. Default 1024.
    pub memory_mib: u64,
    /// Output of the test binary kept, in KiB (the rest is read and dropped). Default 64.
    pub output_kib: usize,
}

impl Default for RustTests {
    fn default() -> Self {
        Self {
            edition: 2024,
            compile_seconds: 60.0,
            test_seconds: 10.0,
            memory_mib: 1024,
            output_kib: 64,
        }
    }
}

/// The code of a chat answer: the last fenced block marked `rust` or `rs` (or unmarked), else
/// the whole answer.
pub fn rust_code(response: &str) -> &str {
    let mut code = None;
    let mut rest = response;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let Some(line_end) = after.find('\n') else {
            break;
        };
        let language = after[..line_end].trim();
        let body = &after[line_end + 1..];
        let Some(close) = body.find("```") else {
            // An unclosed block (the answer ran out of tokens) runs to the end.
            if matches!(language, "rust" | "rs" | "") {
                code = Some(body);
            }
            break;
        };
        if matches!(language, "rust" | "rs" | "") {
            code = Some(&body[..close]);
        }
        rest = &body[close + 3..];
    }
    code.unwrap_or(response)
}

impl RustTests {
    /// Checks the settings and that `rustc` runs here: a run fails at setup, not at its first
    /// grade.
    pub fn check(&self) -> Result<()> {
        let problem = |value: String, expected: &'static str| TaskError::Config {
            field: "environment",
            value,
            expected,
        };
        if ![2015, 2018, 2021, 2024].contains(&self.edition) {
            return Err(problem(
                format!("edition {}", self.edition),
                "a Rust edition: 2015, 2018, 2021 or 2024",
            ));
        }
        let positive = |s: f64| s.is_finite() && s > 0.0;
        if !positive(self.compile_seconds) || !positive(self.test_seconds) {
            return Err(problem(
                format!(
                    "compile_seconds {}, test_seconds {}",
                    self.compile_seconds, self.test_seconds
                ),
                "finite times above 0",
            ));
        }
        if self.memory_mib == 0 || self.output_kib == 0 {
            return Err(problem(
                format!(
                    "memory_mib {}, output_kib {}",
                    self.memory_mib, self.output_kib
                ),
                "limits above 0",
            ));
        }
        match Command::new("rustc").arg("--version").output() {
            Ok(out) if out.status.success() => Ok(()),
            _ => Err(problem(
                "rustc".into(),
                "a Rust compiler on PATH (the Rust-code environment compiles answers)",
            )),
        }
    }

    fn grade(&self, dir: &Path, code: &str, tests: &str) -> std::io::Result<Outcome> {
        std::fs::write(dir.join("solution.rs"), format!("{code}\n\n{tests}\n"))?;
        let compiled = run_limited(
            Command::new("rustc")
                .current_dir(dir)
                .args(["--edition", &self.edition.to_string(), "--test"])
                .args(["-A", "warnings", "--color", "never", "-C", "debuginfo=0"])
                .args(["-o", "solution", "solution.rs"]),
            &Limits {
                seconds: self.compile_seconds,
                memory_bytes: None,
                file_bytes: 1 << 30,
                output_bytes: 1 << 20,
                offline: false,
            },
        )?;
        match compiled.status {
            None => {
                return Ok(failed(format!(
                    "Compiling took longer than {} s.",
                    self.compile_seconds
                )));
            }
            Some(status) if !status.success() => {
                return Ok(failed(format!(
                    "The code does not compile:\n{}",
                    clip(&compiled.stderr)
                )));
            }
            Some(_) => {}
        }
        let ran = run_limited(
            Command::new(dir.join("solution"))
                .current_dir(dir)
                .env_clear()
                .args(["--test-threads=1", "--color", "never"]),
            &Limits {
                seconds: self.test_seconds,
                memory_bytes: Some(self.memory_mib << 20),
                file_bytes: (self.output_kib as u64) << 10,
                output_bytes: self.output_kib << 10,
                offline: true,
            },
        )?;
        Ok(self.verdict(&ran))
    }

    fn verdict(&self, ran: &Finished) -> Outcome {
        let Some(status) = ran.status else {
            return failed(format!(
                "The tests did not finish within {} s and were stopped.",
                self.test_seconds
            ));
        };
        if status.success() {
            return Outcome {
                reward: 1.0,
                correct: true,
                feedback: None,
            };
        }
        // The harness prints the failures after the list of results.
        let report = match ran.stdout.find("failures:") {
            Some(at) => &ran.stdout[at..],
            None => &ran.stdout,
        };
        let ended = match status.code() {
            Some(101) => "The tests failed".to_string(),
            Some(code) => format!("The tests exited with status {code}"),
            None => format!(
                "The tests crashed ({}; the memory limit is {} MiB)",
                signal(&status),
                self.memory_mib
            ),
        };
        failed(format!(
            "{ended}:\n{}",
            clip(&format!("{report}\n{}", ran.stderr))
        ))
    }
}

#[cfg(unix)]
fn signal(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    status
        .signal()
        .map_or("killed".into(), |s| format!("signal {s}"))
}

#[cfg(not(unix))]
fn signal(_: &std::process::ExitStatus) -> String {
    "killed".into()
}

fn failed(feedback: String) -> Outcome {
    Outcome {
        reward: 0.0,
        correct: false,
        feedback: Some(feedback),
    }
}

/// The first [`FEEDBACK_CHARS`] characters of `text`, trimmed.
fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(FEEDBACK_CHARS) {
        Some((at, _)) => format!("{}\n[…]", &text[..at]),
        None => text.to_string(),
    }
}

impl Environment for RustTests {
    fn ungradable(&self, task: &Task) -> Option<String> {
        task.tests
            .is_none()
            .then(|| "no `tests` to run the answer's code against".to_string())
    }

    fn evaluate(&self, task: &Task, response: &str) -> Outcome {
        let Some(tests) = &task.tests else {
            return failed("The task has no tests to run.".into());
        };
        let graded = tempfile::Builder::new()
            .prefix("opd-rust-")
            .tempdir()
            .and_then(|dir| self.grade(dir.path(), rust_code(response), tests));
        graded.unwrap_or_else(|e| {
            tracing::warn!("the Rust-code environment could not grade an answer: {e}");
            failed(format!("The answer could not be graded: {e}"))
        })
    }
}
