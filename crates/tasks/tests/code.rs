//! The Rust-code environment: passing, failing, non-compiling, hanging, crashing and flooding
//! answers, each graded within its limits.

use std::time::{Duration, Instant};

use opd_tasks::{Environment, RustTests, Task, rust_code};

const TESTS: &str = "#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn adds() {
        assert_eq!(add(2, 3), 5);
    }
}";

fn task() -> Task {
    Task {
        prompt: "Write `fn add(a: i64, b: i64) -> i64`.".into(),
        tests: Some(TESTS.into()),
        ..Task::default()
    }
}

/// Short limits, so the hanging cases end quickly.
fn environment() -> RustTests {
    let env = RustTests {
        test_seconds: 2.0,
        memory_mib: 256,
        ..RustTests::default()
    };
    env.check().expect("rustc runs here");
    env
}

fn answer(code: &str) -> String {
    format!("Here is the function:\n\n```rust\n{code}\n```\n\nIt adds the numbers.")
}

#[test]
fn the_code_block_is_what_runs() {
    assert_eq!(rust_code("```rust\nfn a() {}\n```"), "fn a() {}\n");
    assert_eq!(
        rust_code("```text\nnot this\n```\n```rs\nfn b() {}\n```"),
        "fn b() {}\n"
    );
    assert_eq!(
        rust_code("```rust\nfn a() {}\n```\nthen\n```\nfn c() {}\n```"),
        "fn c() {}\n"
    );
    // A block cut off by the token limit runs to the end; no block is the whole answer.
    assert_eq!(rust_code("```rust\nfn d() {"), "fn d() {");
    assert_eq!(rust_code("fn e() {}"), "fn e() {}");
}

#[test]
fn a_right_answer_passes_and_a_wrong_one_says_which_test_failed() {
    let env = environment();
    let right = env.evaluate(&task(), &answer("fn add(a: i64, b: i64) -> i64 { a + b }"));
    assert_eq!(
        (right.reward, right.correct, right.feedback),
        (1.0, true, None)
    );

    let wrong = env.evaluate(&task(), &answer("fn add(a: i64, b: i64) -> i64 { a - b }"));
    assert_eq!((wrong.reward, wrong.correct), (0.0, false));
    let feedback = wrong.feedback.unwrap();
    assert!(feedback.starts_with("The tests failed"), "{feedback}");
    assert!(feedback.contains("tests::adds"), "{feedback}");
    assert!(feedback.contains("left: -1"), "{feedback}");
}

#[test]
fn compiler_errors_are_the_feedback() {
    let env = environment();
    let outcome = env.evaluate(
        &task(),
        &answer("fn add(a: i64, b: i64) -> i64 { a + \"b\" }"),
    );
    assert_eq!(outcome.reward, 0.0);
    let feedback = outcome.feedback.unwrap();
    assert!(
        feedback.starts_with("The code does not compile"),
        "{feedback}"
    );
    assert!(feedback.contains("error[E0277]"), "{feedback}");
    assert!(feedback.contains("solution.rs:1:"), "{feedback}");
    // The temporary directory's path does not leak into the feedback.
    assert!(!feedback.contains("opd-rust-"), "{feedback}");

    let no_tests = env.evaluate(&Task::default(), "fn add() {}");
    assert_eq!(no_tests.reward, 0.0);
}

/// A hung, crashing, memory-hungry or flooding answer is a zero reward within its limits.
#[test]
fn misbehaving_answers_are_stopped() {
    let env = environment();
    let cases = [
        (
            "fn add(a: i64, b: i64) -> i64 { loop { std::hint::black_box(a + b); } }",
            "did not finish within 2 s",
        ),
        (
            "fn add(_: i64, _: i64) -> i64 { std::process::abort() }",
            "The tests crashed (signal 6",
        ),
        (
            "fn add(a: i64, b: i64) -> i64 { let v = vec![1u8; 1 << 31]; a + b + v[7] as i64 }",
            "The tests crashed (signal 6; the memory limit is 256 MiB)",
        ),
        (
            // The test harness captures a test's output in memory: the flood ends at the
            // memory limit, or at the time limit on a slow machine.
            "fn add(a: i64, _: i64) -> i64 { loop { println!(\"{a} {a} {a} {a} {a} {a} {a}\"); } }",
            "The tests crashed|did not finish within 2 s",
        ),
        (
            "fn add(a: i64, b: i64) -> i64 { std::process::exit((a + b) as i32) }",
            "The tests exited with status 5",
        ),
    ];
    for (code, expected) in cases {
        let clock = Instant::now();
        let outcome = env.evaluate(&task(), &answer(code));
        let feedback = outcome.feedback.unwrap_or_default();
        assert_eq!(outcome.reward, 0.0, "{code}");
        assert!(
            expected.split('|').any(|e| feedback.contains(e)),
            "{code}: {feedback}"
        );
        assert!(
            feedback.chars().count() < 2100,
            "{code}: feedback is clipped"
        );
        // Compile time plus the 2 s limit, with room for a loaded machine.
        assert!(clock.elapsed() < Duration::from_secs(60), "{code}");
    }
}

/// The tests run without network: in a network namespace of their own, even the loopback
/// interface is unreachable (here, connecting to a closed local port is refused instead).
#[cfg(target_os = "linux")]
#[test]
fn answers_run_offline() {
    let unreachable = |e: std::io::Error| e.kind() == std::io::ErrorKind::NetworkUnreachable;
    let here = std::net::TcpStream::connect("127.0.0.1:1").map_err(unreachable);
    assert!(matches!(here, Err(false)), "loopback is reachable here");
    let code = "fn add(a: i64, b: i64) -> i64 {
        let offline = std::net::TcpStream::connect(\"127.0.0.1:1\")
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NetworkUnreachable);
        if offline { a + b } else { 0 }
    }";
    let outcome = environment().evaluate(&task(), &answer(code));
    assert!(outcome.correct, "{:?}", outcome.feedback);
}

#[test]
fn settings_out_of_range_are_errors() {
    for env in [
        RustTests {
            edition: 2020,
            ..RustTests::default()
        },
        RustTests {
            test_seconds: 0.0,
            ..RustTests::default()
        },
        RustTests {
            memory_mib: 0,
            ..RustTests::default()
        },
    ] {
        assert!(env.check().is_err(), "{env:?}");
    }
}

/// Answers that try to pass without passing the tests: an early `exit(0)` from a test of
/// their own, a shadowed assertion macro (textual or exported), a printed report.
#[test]
fn answers_cannot_fake_their_grade() {
    let env = environment();
    let wrong = "fn add(a: i64, b: i64) -> i64 { a - b }";
    let tricks = [
        "#[test]\nfn aaa_first() { std::process::exit(0) }",
        "macro_rules! assert_eq { ($($t:tt)*) => {} }",
        "#[macro_export]\nmacro_rules! assert_eq { ($($t:tt)*) => {} }",
        "#[allow(dead_code)]\nfn report() {}\n#[test]\nfn aaa() {\n    println!(\"test tests::adds ... ok\\n\\ntest result: ok. 1 passed; 0 failed; 0 ignored\");\n    std::process::exit(0)\n}",
    ];
    for trick in tricks {
        let outcome = env.evaluate(&task(), &answer(&format!("{wrong}\n{trick}")));
        assert_eq!(outcome.reward, 0.0, "{trick}: {:?}", outcome.feedback);
    }
    // The same right answer with a harmless test of its own still passes.
    let right =
        "fn add(a: i64, b: i64) -> i64 { a + b }\n#[test]\nfn mine() { assert_eq!(add(1, 1), 2); }";
    let outcome = env.evaluate(&task(), &answer(right));
    assert!(outcome.correct, "{:?}", outcome.feedback);
}

/// Nothing of the host reaches an answer's feedback: not the trainer's environment (at
/// compile or run time), not a file read at compile time, not a file read at run time.
#[test]
fn answers_cannot_read_the_host() {
    let env = environment();
    let secret = "host-secret-4f1c9e";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), secret).unwrap();
    let path = file.path().display().to_string();
    // SAFETY: set before any grade starts; the variable is only read by child processes.
    unsafe { std::env::set_var("OPD_TEST_HOST_SECRET", secret) };
    let attempts = [
        "fn add(_: i64, _: i64) -> i64 { panic!(\"{}\", env!(\"OPD_TEST_HOST_SECRET\")) }".to_string(),
        "fn add(_: i64, _: i64) -> i64 { panic!(\"{:?}\", std::env::var(\"OPD_TEST_HOST_SECRET\")) }".to_string(),
        format!("fn add(_: i64, _: i64) -> i64 {{ panic!(\"{{}}\", include_str!({path:?})) }}"),
        format!("fn add(_: i64, _: i64) -> u8 {{ include_bytes!({path:?})[0] }}"),
        format!("#[path = {path:?}]\nmod leak;\nfn add(a: i64, b: i64) -> i64 {{ a + b }}"),
        format!("include!({path:?});\nfn add(a: i64, b: i64) -> i64 {{ a + b }}"),
        format!("fn add(_: i64, _: i64) -> i64 {{ panic!(\"{{:?}}\", std::fs::read_to_string({path:?})) }}"),
        "fn add(_: i64, _: i64) -> i64 { panic!(\"{:?}\", std::fs::read_dir(\"/\").map(|d| d.count())) }".to_string(),
    ];
    for code in &attempts {
        let outcome = env.evaluate(&task(), &answer(code));
        let feedback = outcome.feedback.unwrap_or_default();
        assert_eq!(outcome.reward, 0.0, "{code}");
        assert!(!feedback.contains(secret), "{code}: {feedback}");
        assert!(
            !feedback.contains(&path) || !feedback.contains("Ok("),
            "{code}: {feedback}"
        );
    }
    // The run-time directory listing sees the jail: its root holds the grade's files only.
    let outcome = env.evaluate(&task(), &answer(&attempts[7]));
    let feedback = outcome.feedback.unwrap_or_default();
    assert!(
        feedback.contains("Ok(3)") || feedback.contains("Ok(2)") || feedback.contains("Err("),
        "{feedback}"
    );
}

/// A process an answer starts, even in a process group of its own, does not outlive the
/// grade, and the grade does not wait on the pipes it holds.
#[cfg(target_os = "linux")]
#[test]
fn processes_an_answer_starts_end_with_the_grade() {
    let env = environment();
    let marker = format!("opd_escapee_{}", std::process::id());
    let code = format!(
        "fn add(a: i64, b: i64) -> i64 {{
            use std::os::unix::process::CommandExt;
            // It holds the pipes open, writes to stderr only, and leaves the group.
            let started = std::process::Command::new(\"/solution\")
                .args([\"--exact\", \"{marker}\", \"--ignored\"])
                .stdout(std::io::stderr())
                .process_group(0)
                .spawn();
            std::thread::sleep(std::time::Duration::from_millis(200));
            if started.is_ok() {{ a + b }} else {{ 0 }}
        }}
        #[test]
        #[ignore]
        fn {marker}() {{ std::thread::sleep(std::time::Duration::from_secs(120)) }}"
    );
    let clock = Instant::now();
    let outcome = env.evaluate(&task(), &answer(&code));
    assert!(clock.elapsed() < Duration::from_secs(60));
    assert!(outcome.correct, "{:?}", outcome.feedback);
    std::thread::sleep(Duration::from_millis(300));
    let alive = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .any(|cmdline| String::from_utf8_lossy(&cmdline).contains(&marker));
    assert!(!alive, "a process the answer started outlived the grade");
}
