//! JSONL data files: one task per line.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use crate::error::{Result, TaskError};
use crate::task::Task;

/// Reads one [`Task`] per line of `path` (blank lines skipped). A malformed row, an unknown
/// key or an empty prompt is an error naming the file and line.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Task>> {
    Ok(read_jsonl_lines(path)?
        .into_iter()
        .map(|(_, task)| task)
        .collect())
}

/// [`read_jsonl`], with each task's 1-based line, for errors found later that name it.
pub fn read_jsonl_lines(path: impl AsRef<Path>) -> Result<Vec<(usize, Task)>> {
    let path = path.as_ref();
    let error = |line, problem: String| TaskError::Data {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| error(0, e.to_string()))?;
    let mut tasks = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_number = index + 1;
        let line = line.map_err(|e| error(line_number, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let task: Task = serde_json::from_str(&line).map_err(|e| {
            error(
                line_number,
                format!("{e} (a row is {{\"prompt\", \"reference\", \"answer\", \"tests\", \"teacher\"}})"),
            )
        })?;
        if task.prompt.trim().is_empty() {
            return Err(error(line_number, "the prompt is empty".into()));
        }
        tasks.push((line_number, task));
    }
    if tasks.is_empty() {
        return Err(error(0, "no tasks in the file".into()));
    }
    Ok(tasks)
}

/// Writes `tasks` to `path`, one JSON object per line.
pub fn write_jsonl(path: impl AsRef<Path>, tasks: &[Task]) -> Result<()> {
    let path = path.as_ref();
    let error = |e: std::io::Error| TaskError::Data {
        path: path.to_path_buf(),
        line: 0,
        problem: e.to_string(),
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(error)?);
    for task in tasks {
        let line = serde_json::to_string(task).expect("a task serializes");
        writeln!(out, "{line}").map_err(error)?;
    }
    out.flush().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn rows_round_trip() {
        let tasks = vec![
            Task::with_answer("1+1", "2"),
            Task {
                prompt: "p".into(),
                tests: Some("assert!(true);".into()),
                ..Task::default()
            },
        ];
        let f = tempfile::NamedTempFile::new().unwrap();
        write_jsonl(f.path(), &tasks).unwrap();
        assert_eq!(read_jsonl(f.path()).unwrap(), tasks);
    }

    #[test]
    fn a_bad_row_names_its_file_and_line() {
        let f = file("{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\", \"anwser\": \"1\"}\n");
        let message = read_jsonl(f.path()).unwrap_err().to_string();
        assert!(
            message.contains(&format!("{}:3:", f.path().display())),
            "{message}"
        );
        assert!(message.contains("anwser"), "{message}");
        let error = |text: &str| read_jsonl(file(text).path()).unwrap_err().to_string();
        assert!(error("{\"prompt\": \"a\"}\n{\"prompt\": 3}\n").contains(":2:"));
        assert!(error("{\"prompt\": \" \"}\n").contains("prompt is empty"));
        assert!(error("not json\n").contains(":1:"));
        assert!(error("\n").contains("no tasks"));
        assert!(read_jsonl("/no/such/file.jsonl").is_err());
    }
}
