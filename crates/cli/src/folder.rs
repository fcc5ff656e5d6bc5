//! The run folder on disk: one writer at a time, files replaced whole, metrics appended a
//! line at a time.
//!
//! - [`RunFolder::lock`] takes an exclusive advisory lock on `DIR/.lock` (`flock` on Unix):
//!   a second `opd train` on the folder is refused with the holder's pid, and the lock goes
//!   with the process that holds it, so a killed run never leaves a stale one.
//! - [`write_atomically`] writes `PATH.tmp`, fsyncs it, renames it over `PATH` and fsyncs the
//!   folder: a reader sees the old file or the new one, never a mix.
//! - [`MetricsLog`] appends each record as one line in one `write` call; [`read_metrics`]
//!   skips (and reports) a torn last line, the mark of a kill or a full disk mid-write.
//! - [`save_final`] writes the trained model as `final/` through `final.tmp/`, so `final/` is
//!   always one whole model.

use opd_divergences::TrainingBackend;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use opd_policy::SaveDtype;
use opd_trainers::Trainer;
use opd_trainers::checkpoint::sync_dir;

use crate::error::{CliError, Result};
use crate::record::Record;

/// The lock file of a run folder.
pub const LOCK: &str = ".lock";

/// The metrics file of a run folder.
pub const METRICS: &str = "metrics.jsonl";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A run folder this process alone writes to, for as long as the value lives.
#[derive(Debug)]
pub struct RunFolder {
    dir: PathBuf,
    /// Holds the lock; closing it releases it.
    _lock: File,
}

impl RunFolder {
    /// Creates `dir` if needed and takes its lock, or says which process holds it.
    pub fn lock(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    pid => format!("process {pid}"),
                };
                return Err(CliError::Run {
                    path: dir.to_path_buf(),
                    problem: format!(
                        "{holder} is writing this run (it holds {}); one run folder has one \
                         writer: wait for it, stop it, or choose another output.dir",
                        path.display()
                    ),
                });
            }
            Err(TryLockError::Error(source)) => return Err(CliError::Io { path, source }),
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        write!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: file,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder's entries other than the lock, sorted.
    pub fn entries(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != LOCK)
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Replaces `path` with `bytes` so that a kill at any moment leaves the old file or the new
/// one: `PATH.tmp` written and fsynced, renamed over `path`, the folder fsynced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    sync_dir(parent.unwrap_or(Path::new("."))).map_err(io(path))
}

/// Removes what a process killed mid-write leaves in `dir`: `NAME.tmp` files and folders of
/// [`write_atomically`] and of the final model (partial checkpoints are pruned with the old
/// ones). Only the folder's writer calls it.
pub fn remove_leftovers(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
    {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = ["metrics.jsonl.tmp", "config.toml.tmp", "final.tmp"];
        if !ours.contains(&name.as_str()) {
            continue;
        }
        let removed = match path.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        };
        removed.map_err(io(&path))?;
    }
    Ok(())
}

/// Appends records to `metrics.jsonl`: each one line, written in one call.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending (created if absent).
    pub fn append_to(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes `record` and its newline with one `write` to the file.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("a record serializes");
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(io(&self.path))
    }
}

/// The lines of a metrics file: each record with its text as written, and the bytes of a
/// torn last line (one without its newline), which is not among them.
#[derive(Debug, Default)]
pub struct MetricsLines {
    /// Complete lines: the text (without newline) and its record.
    pub lines: Vec<(String, Record)>,
    /// Bytes of a torn last line, skipped.
    pub torn_bytes: Option<usize>,
}

impl MetricsLines {
    /// Reads `path`. Every line written whole ends with a newline, so a last line without one
    /// was cut by a kill or a full disk: it is skipped and counted. A complete line that does
    /// not parse is an error naming the line.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let (complete, torn) = match text.rfind('\n') {
            Some(end) => (&text[..end + 1], &text[end + 1..]),
            None => ("", text.as_str()),
        };
        let lines = complete
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map(|record| (line.to_string(), record))
                    .map_err(|e| CliError::Run {
                        path: path.to_path_buf(),
                        problem: format!("line {}: {e}", i + 1),
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            lines,
            torn_bytes: (!torn.is_empty()).then_some(torn.len()),
        })
    }

    /// The records.
    pub fn records(&self) -> Vec<Record> {
        self.lines.iter().map(|(_, r)| r.clone()).collect()
    }
}

/// The records of a `metrics.jsonl`; a torn last line is skipped with a warning.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    let read = MetricsLines::read(path)?;
    if let Some(bytes) = read.torn_bytes {
        tracing::warn!(
            "{}: skipped a torn last line ({bytes} bytes without a newline: the run was stopped while writing it)",
            path.display()
        );
    }
    Ok(read.records())
}

/// Writes the student as `final/`: into `final.tmp/`, fsynced, then renamed over any older
/// `final/`, so that `final/` is always one whole model.
pub fn save_final<B: TrainingBackend>(
    trainer: &Trainer<B>,
    tokenizer: &opd_policy::ChatTokenizer,
    dir: &Path,
) -> Result<()> {
    let (tmp, final_dir) = (dir.join("final.tmp"), dir.join("final"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::Io { path, source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    opd_policy::save(trainer.student(), tokenizer, &tmp, SaveDtype::F32)?;
    sync_dir(&tmp).map_err(io(&tmp))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    sync_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EvalRecord;

    fn eval(step: usize) -> Record {
        Record::Eval(EvalRecord {
            step,
            generated_tokens_total: 10 * step as u64,
            accuracy: 0.5,
            reward: 0.5,
            answers: 4,
        })
    }

    fn line(step: usize) -> String {
        serde_json::to_string(&eval(step)).unwrap()
    }

    #[test]
    fn a_last_line_without_its_newline_is_torn_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let torn = &line(2)[..10];
        std::fs::write(&path, format!("{}\n{}\n{torn}", line(0), line(1))).unwrap();
        let read = MetricsLines::read(&path).unwrap();
        assert_eq!(read.lines.len(), 2);
        assert_eq!(read.lines[1].0, line(1));
        assert_eq!(read.torn_bytes, Some(10));
        // A complete line that does not parse is damage, not a torn write: an error with its line.
        std::fs::write(&path, format!("{}\n{{\"st\n{}\n", line(0), line(2))).unwrap();
        let error = MetricsLines::read(&path).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn appended_records_are_whole_lines_and_atomic_writes_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::append_to(&path).unwrap();
        log.append(&eval(0)).unwrap();
        log.append(&eval(1)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n{}\n", line(0), line(1)));
        assert_eq!(
            MetricsLines::read(&path).unwrap().records(),
            [eval(0), eval(1)]
        );
        write_atomically(&path, b"x\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x\n");
        assert!(!dir.path().join("metrics.jsonl.tmp").exists());
    }

    #[test]
    fn the_lock_names_its_holder_and_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = RunFolder::lock(dir.path()).unwrap();
        let error = RunFolder::lock(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&format!("process {}", std::process::id())),
            "{error}"
        );
        drop(held);
        assert!(RunFolder::lock(dir.path()).is_ok());
    }
}
