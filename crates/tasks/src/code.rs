//! The Rust-code environment: an answer's code compiled with the task's tests and run.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};
use crate::sandbox::{Finished, Jail, Limits, run_limited};
use crate::task::{Environment, Outcome, Task};

/// Most characters of compiler or test output kept as feedback.
const FEEDBACK_CHARS: usize = 2000;

/// Address space the compiler may use.
const COMPILER_MEMORY: u64 = 4 << 30;

/// Grades Rust answers by the task's tests: the task's `tests` (a `#[cfg(test)] mod tests`,
/// its name given a random suffix for this grade) and then the code of the answer
/// ([`rust_code`]) are written to a temporary directory, compiled with `rustc --edition E
/// --test` into a static binary (the standard library only, nothing downloaded) and run.
/// Reward 1 when the test binary exits 0 **and** its harness reported every one of the
/// task's tests `ok` under the suffixed module and a summary with 0 failed, else 0: an answer
/// that exits early, adds tests of its own or prints a report cannot pass for the tests, and
/// one that redefines `assert!`/`assert_eq!` cannot reach them (the tests come first, and a
/// `#[macro_export]`ed one is ambiguous).
///
/// Nothing of the host reaches the answer: `rustc` runs with an empty environment (no
/// `env!` secret), and a compile that read any file but the answer (`include_str!`,
/// `include!`, `#[path]`) is refused without its output; the tests run in a jail (Linux: no
/// root, own user, PID and network namespaces, `chroot` into the grade's directory), under
/// time, memory, process-count and output limits, and every process they start ends with
/// the grade. A submission that hangs, crashes, forks or floods its output is a reward of
/// 0, never a hung trainer. Feedback (SDPO's privileged context) is the compiler's errors or
/// the failing tests' output.
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
    /// Processes and threads the test binary may have at once. Default 16.
    pub processes: u64,
    /// Run the tests without the jail where the kernel refuses namespaces (the answer could
    /// then read the host's files). Default false: such a machine is an error at setup.
    pub allow_unjailed: bool,
}

impl Default for RustTests {
    fn default() -> Self {
        Self {
            edition: 2024,
            compile_seconds: 60.0,
            test_seconds: 10.0,
            memory_mib: 1024,
            output_kib: 64,
            processes: 16,
            allow_unjailed: false,
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
        compiler().map_err(|e| {
            problem(
                e.to_string(),
                "a Rust compiler on PATH (the Rust-code environment compiles answers)",
            )
        })?;
        // One grade end to end: the compiler, a static test binary, the jail.
        let tests = "#[test]\nfn probe() { assert_eq!(super::probe(), 1); }";
        let outcome = tempfile::Builder::new()
            .prefix("opd-rust-")
            .tempdir()
            .and_then(|dir| self.grade(dir.path(), "fn probe() -> i32 { 1 }", tests));
        match outcome {
            Ok(outcome) if outcome.correct => Ok(()),
            Ok(outcome) => Err(problem(
                outcome.feedback.unwrap_or_default(),
                "a Rust toolchain that builds static test binaries (glibc's libc.a, from libc6-dev)",
            )),
            Err(e) => Err(problem(
                format!("the test jail: {e}"),
                "Linux user, PID and network namespaces for the tests, or \
                 `allow_unjailed = true` (the answer can then read the host's files)",
            )),
        }
    }

    fn grade(&self, dir: &Path, code: &str, tests: &str) -> std::io::Result<Outcome> {
        let suite = Suite::new(tests);
        let before = format!("{}\n\n", suite.source);
        std::fs::write(dir.join("solution.rs"), format!("{before}{code}\n"))?;
        let lines_before = before.matches('\n').count();
        let compiled = run_limited(
            Command::new(compiler()?)
                .current_dir(dir)
                .env_clear()
                .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
                .args(["--edition", &self.edition.to_string(), "--test"])
                .args(["-A", "warnings", "--color", "never", "-C", "debuginfo=0"])
                .args(["-C", "target-feature=+crt-static"])
                .args(["--emit", "dep-info=solution.d,link=solution", "solution.rs"]),
            &Limits {
                seconds: self.compile_seconds,
                memory_bytes: Some(COMPILER_MEMORY),
                file_bytes: 1 << 30,
                output_bytes: 1 << 20,
                jail: None,
            },
        )?;
        if reads_outside_the_answer(dir, &compiled.stderr) {
            return Ok(failed(
                "The code reads files other than itself (include!, include_str!, \
                 include_bytes! or #[path]); that is not allowed."
                    .into(),
            ));
        }
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
                    clip(&answer_lines(&compiled.stderr, lines_before))
                )));
            }
            Some(_) => {}
        }
        jail_permissions(dir)?;
        let ran = run_limited(
            Command::new("./solution")
                .current_dir(dir)
                .env_clear()
                .args(["--test-threads=1", "--color", "never"]),
            &Limits {
                seconds: self.test_seconds,
                memory_bytes: Some(self.memory_mib << 20),
                file_bytes: (self.output_kib as u64) << 10,
                output_bytes: self.output_kib << 10,
                jail: Some(Jail {
                    processes: self.processes,
                    required: !self.allow_unjailed,
                }),
            },
        )?;
        Ok(self.verdict(&ran, &suite))
    }

    fn verdict(&self, ran: &Finished, suite: &Suite) -> Outcome {
        let Some(status) = ran.status else {
            return failed(format!(
                "The tests did not finish within {} s and were stopped.",
                self.test_seconds
            ));
        };
        if status.success() {
            return match suite.all_passed(&ran.stdout) {
                true => Outcome {
                    reward: 1.0,
                    correct: true,
                    feedback: None,
                },
                false => failed(
                    "The test program ended before its harness reported every test as \
                     passed (did the code exit the process?)."
                        .into(),
                ),
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

/// The task's tests as this grade compiles them: wrapped in a module whose name carries a
/// random suffix, so the harness's report of them cannot be written by the answer.
struct Suite {
    /// `#[cfg(test)] mod grade_<suffix> { use super::*; <tests> }`.
    source: String,
    /// `grade_<suffix>`.
    module: String,
    /// The task's `#[test]` functions.
    tests: usize,
}

impl Suite {
    fn new(tests: &str) -> Self {
        let module = format!("grade_{:016x}", rand::random::<u64>());
        Self {
            source: format!(
                "#[cfg(test)]\nmod {module} {{\n#[allow(unused_imports)]\nuse super::*;\n{tests}\n}}"
            ),
            tests: tests.matches("#[test]").count(),
            module,
        }
    }

    /// Whether the harness reported each of the task's tests `ok` and nothing failed.
    fn all_passed(&self, stdout: &str) -> bool {
        let own = format!("test {}::", self.module);
        let passed = stdout
            .lines()
            .filter(|line| line.starts_with(&own) && line.ends_with(" ... ok"))
            .count();
        passed == self.tests
            && stdout
                .lines()
                .any(|line| line.starts_with("test result: ok.") && line.contains(" 0 failed;"))
    }
}

/// Compiler messages with the answer's line numbers (`solution.rs:N:` and the `N |` gutter)
/// counted from the answer's first line, as the model wrote it, not from the file's (the
/// task's tests come first).
fn answer_lines(messages: &str, before: usize) -> String {
    let shift = |n: &str| match n.parse::<usize>() {
        Ok(n) if n > before => Some((n - before).to_string()),
        _ => None,
    };
    let mut out = String::with_capacity(messages.len());
    for line in messages.lines() {
        let gutter = line.trim_start();
        let digits = gutter.len()
            - gutter
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        let rewritten = if let Some(at) = line.find("solution.rs:") {
            let rest = &line[at + "solution.rs:".len()..];
            let end = rest.find(':').unwrap_or(rest.len());
            shift(&rest[..end]).map(|n| format!("{}solution.rs:{n}{}", &line[..at], &rest[end..]))
        } else if digits > 0 && gutter[digits..].starts_with(" |") {
            let indent = line.len() - gutter.len();
            shift(&gutter[..digits]).map(|n| {
                let width = indent + digits;
                format!("{n:>width$}{}", &gutter[digits..])
            })
        } else {
            None
        };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The real compiler (`$(rustc --print sysroot)/bin/rustc`), which runs without the
/// environment a `rustup` proxy needs.
fn compiler() -> std::io::Result<std::path::PathBuf> {
    static COMPILER: std::sync::OnceLock<std::result::Result<std::path::PathBuf, String>> =
        std::sync::OnceLock::new();
    COMPILER
        .get_or_init(|| {
            let out = Command::new("rustc")
                .args(["--print", "sysroot"])
                .output()
                .map_err(|e| format!("rustc: {e}"))?;
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let rustc = Path::new(&sysroot).join("bin").join("rustc");
            match out.status.success() && rustc.is_file() {
                true => Ok(rustc),
                false => Err(format!("rustc --print sysroot gave {sysroot:?}")),
            }
        })
        .clone()
        .map_err(std::io::Error::other)
}

/// Whether the compile read any file but `solution.rs`: from the dependencies rustc wrote
/// (`solution.d`, written also when the code does not type-check), or, where it wrote none,
/// from the files its messages point at.
fn reads_outside_the_answer(dir: &Path, stderr: &str) -> bool {
    let outside = |path: &str| !["solution", "solution.d", "solution.rs"].contains(&path);
    match std::fs::read_to_string(dir.join("solution.d")) {
        Ok(deps) => deps
            .split_whitespace()
            .any(|token| outside(token.trim_end_matches(':'))),
        Err(_) => stderr
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("--> "))
            .any(|at| outside(at.split(':').next().unwrap_or(""))),
    }
}

/// The grade's directory and binary as the jail's `nobody` needs them: the directory
/// searchable, the binary executable and not readable.
fn jail_permissions(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(dir.join("solution"), std::fs::Permissions::from_mode(0o111))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
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
