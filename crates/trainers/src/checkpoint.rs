//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! A checkpoint is a folder `step-000012/` (the number of steps taken) holding
//! - `trainable.safetensors`: the student's trainable parameters (every weight, or only the
//!   LoRA adapters), f32, named by module path, their parameter ids in the metadata;
//! - `optimizer.bin`: AdamW's moments and step counts (a burn record, full precision);
//! - `teacher.safetensors`: an EMA teacher's average of the same parameters, when it has one;
//! - `state.json`: the step, the position in the task order, the collapse watch's baseline,
//!   the tokens spent, a fingerprint of the tasks, the config, and a manifest of the other
//!   files (bytes and CRC-32 of each).
//!
//! Rollout seeds are `seed + step`, so the step is the sampler's whole random state. A
//! checkpoint is written as `step-000012.tmp/` (each file fsynced, `state.json` last), the
//! folder fsynced and renamed, and the run folder fsynced: a folder without the suffix is
//! never partial, even after a power loss, and a killed run resumes from the last complete
//! one. [`verify`] checks every file against the manifest before anything is read, so a
//! damaged file is an error naming it, never a panic in a decoder.

use opd_divergences::TrainingBackend;
use opd_policy::Trainable;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
pub use crate::fingerprint::tasks_fingerprint;
use crate::named::{self, Named};
use crate::state::{RunProgress, SavedState, TokensSpent};
use crate::trainer::Trainer;

const TRAINABLE: &str = "trainable.safetensors";
const OPTIMIZER: &str = "optimizer.bin";
const TEACHER: &str = "teacher.safetensors";
const STATE: &str = "state.json";

/// What `state.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    steps_done: usize,
    tasks_drawn: usize,
    first_response_length: Option<f64>,
    /// Absent in checkpoints of earlier versions.
    #[serde(default)]
    tokens_spent: Option<TokensSpent>,
    /// [`tasks_fingerprint`] of the trainer's tasks; absent in earlier versions.
    #[serde(default)]
    tasks: Option<String>,
    config: TrainConfig,
    /// Every other file of the checkpoint; absent in earlier versions (then not verified).
    #[serde(default)]
    files: Option<BTreeMap<String, FileSum>>,
}

/// A file's size and CRC-32 (IEEE), as the manifest records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileSum {
    bytes: u64,
    crc32: u32,
}

impl FileSum {
    fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        }
    }
}

/// The folder of the checkpoint taken after `steps_done` steps in `run`.
pub fn checkpoint_dir(run: impl AsRef<Path>, steps_done: usize) -> PathBuf {
    run.as_ref().join(format!("step-{steps_done:06}"))
}

/// The complete checkpoints in `run`, oldest first, with their step.
pub fn checkpoints(run: impl AsRef<Path>) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run.as_ref()) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let step = path
                .file_name()?
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            path.join(STATE).is_file().then_some((step, path))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint in `run`.
pub fn latest_checkpoint(run: impl AsRef<Path>) -> Option<PathBuf> {
    checkpoints(run).pop().map(|(_, path)| path)
}

/// Deletes all but the newest `keep` checkpoints of `run`, and any partial one.
pub fn prune_checkpoints(run: impl AsRef<Path>, keep: usize) -> Result<()> {
    let all = checkpoints(&run);
    let old = all.len().saturating_sub(keep);
    for (_, path) in &all[..old] {
        std::fs::remove_dir_all(path).map_err(|e| problem(path, e))?;
    }
    if let Ok(entries) = std::fs::read_dir(run.as_ref()) {
        for path in entries.filter_map(|e| Some(e.ok()?.path())) {
            let partial = path.extension().is_some_and(|e| e == "tmp")
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"));
            if partial {
                std::fs::remove_dir_all(&path).map_err(|e| problem(&path, e))?;
            }
        }
    }
    Ok(())
}

fn problem(path: &Path, detail: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: detail.to_string(),
    }
}

/// `tensors` as safetensors bytes, with each one's parameter id in the metadata.
fn encode(tensors: &[Named]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.as_bytes().to_vec()).collect();
    let views = tensors.iter().zip(&bytes).map(|(t, b)| {
        let view = TensorView::new(Dtype::F32, t.data.shape.to_vec(), b).expect("f32 data");
        (t.path.clone(), view)
    });
    let ids = tensors
        .iter()
        .map(|t| (t.path.clone(), t.id.serialize()))
        .collect();
    safetensors::serialize(views, Some(ids)).expect("tensors serialize")
}

/// The tensors of a safetensors file with their parameter ids.
fn decode(path: &Path) -> Result<HashMap<String, (TensorData, Option<ParamId>)>> {
    let bytes = std::fs::read(path).map_err(|e| problem(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| problem(path, e))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| problem(path, e))?;
    let ids = metadata.metadata().clone().unwrap_or_default();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            if view.dtype() != Dtype::F32 {
                return Err(problem(
                    path,
                    format!("`{name}` is {:?}, not F32", view.dtype()),
                ));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let id = ids.get(&name).and_then(|s| ParamId::try_deserialize(s));
            Ok((name, (TensorData::new(values, view.shape().to_vec()), id)))
        })
        .collect()
}

/// Writes `dir/name` (the folder exists) and waits until it is on disk; returns its sum.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<FileSum> {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).map_err(|e| problem(&path, e))?;
    file.write_all(bytes).map_err(|e| problem(&path, e))?;
    file.sync_all().map_err(|e| problem(&path, e))?;
    Ok(FileSum::of(bytes))
}

/// Flushes a folder's entries (new files, a rename) to disk; a no-op where folders cannot be
/// opened (Windows).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads and parses a checkpoint's `state.json`.
fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| problem(&path, e))?;
    serde_json::from_str(&text).map_err(|e| problem(&path, format!("damaged: {e}")))
}

/// Checks the checkpoint in `dir`: `state.json` parses and every file its manifest names
/// has the recorded size and CRC-32. The error names the first damaged file. Checkpoints of
/// earlier versions, without a manifest, pass unchecked.
pub fn verify(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let state = read_state(dir)?;
    for (name, expected) in state.files.iter().flatten() {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| problem(&path, e))?;
        let found = FileSum::of(&bytes);
        if found.bytes != expected.bytes {
            return Err(problem(
                &path,
                format!(
                    "damaged: {} bytes, the manifest says {}",
                    found.bytes, expected.bytes
                ),
            ));
        }
        if found.crc32 != expected.crc32 {
            return Err(problem(
                &path,
                format!(
                    "damaged: CRC-32 {:08x}, the manifest says {:08x}",
                    found.crc32, expected.crc32
                ),
            ));
        }
    }
    Ok(())
}

/// The tokens spent by the run whose checkpoint is in `dir`, when it records them.
pub fn tokens_spent(dir: impl AsRef<Path>) -> Result<Option<TokensSpent>> {
    Ok(read_state(dir.as_ref())?.tokens_spent)
}

impl<B: TrainingBackend, M: Trainable<B>> Trainer<B, M> {
    /// Saves what [`Trainer::resume`] needs into `dir` (see the [module](self) docs), written
    /// as `dir.tmp` and renamed: `dir` is complete or absent.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let tmp = dir.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| problem(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| problem(&tmp, e))?;
        let saved = self.state();
        let mut files = BTreeMap::new();
        let trainable = named::collect(saved.student, &|_, trainable| trainable);
        files.insert(
            TRAINABLE.to_string(),
            write(&tmp, TRAINABLE, &encode(&trainable))?,
        );
        let optimizer = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(saved.optimizer, ())
            .map_err(|e| problem(&tmp.join(OPTIMIZER), e))?;
        files.insert(OPTIMIZER.to_string(), write(&tmp, OPTIMIZER, &optimizer)?);
        if let Some(teacher) = saved.teacher {
            let paths: BTreeSet<String> = trainable.iter().map(|t| t.path.clone()).collect();
            let moved = named::collect(teacher, &|path, _| paths.contains(path));
            files.insert(TEACHER.to_string(), write(&tmp, TEACHER, &encode(&moved))?);
        }
        let p = saved.progress;
        let state = State {
            steps_done: p.steps_done,
            tasks_drawn: p.tasks_drawn,
            first_response_length: p.first_response_length,
            tokens_spent: Some(p.tokens_spent),
            tasks: Some(tasks_fingerprint(saved.tasks)),
            config: saved.config.clone(),
            files: Some(files),
        };
        let json = serde_json::to_string_pretty(&state).expect("state serializes");
        write(&tmp, STATE, json.as_bytes())?;
        sync_dir(&tmp).map_err(|e| problem(&tmp, e))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| problem(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| problem(dir, e))?;
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        sync_dir(parent.unwrap_or(Path::new("."))).map_err(|e| problem(dir, e))
    }

    /// Continues from the checkpoint in `dir`: this trainer must be built as the saved one was
    /// (the same config but for `steps`, initial model, tasks and teacher); the student's
    /// trainable weights, the optimizer, an EMA teacher, the step and the task order are then
    /// those of the saved run, and the next steps are the ones it would have taken.
    ///
    /// Every file is checked against the manifest ([`verify`]) before any is read; tasks other
    /// than the saved run's are refused.
    pub fn resume(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let state_path = dir.join(STATE);
        verify(dir)?;
        let state = read_state(dir)?;
        let now = self.state();
        let saved = TrainConfig {
            steps: now.config.steps,
            ..state.config.clone()
        };
        if saved != *now.config {
            return Err(problem(
                &state_path,
                "the run was saved with another config (only `steps` may change on resume)",
            ));
        }
        let fingerprint = tasks_fingerprint(now.tasks);
        if let Some(saved) = &state.tasks
            && *saved != fingerprint
        {
            return Err(problem(
                &state_path,
                format!(
                    "the run was saved with other tasks ({saved}; these are {fingerprint}): a \
                     resumed run must draw from the same tasks"
                ),
            ));
        }
        let trainable = dir.join(TRAINABLE);
        let student = named::replace(now.student.clone(), decode(&trainable)?)
            .map_err(|e| problem(&trainable, e))?;
        let optimizer_path = dir.join(OPTIMIZER);
        let bytes = std::fs::read(&optimizer_path).map_err(|e| problem(&optimizer_path, e))?;
        let device = crate::device::device_of(now.student);
        let optimizer = BinBytesRecorder::<FullPrecisionSettings>::default()
            .load(bytes, &device)
            .map_err(|e| problem(&optimizer_path, e))?;
        let teacher = match now.teacher.cloned() {
            Some(teacher) => {
                let path = dir.join(TEACHER);
                Some(named::replace(teacher, decode(&path)?).map_err(|e| problem(&path, e))?)
            }
            None => None,
        };
        let progress = RunProgress {
            steps_done: state.steps_done,
            tasks_drawn: state.tasks_drawn,
            first_response_length: state.first_response_length,
            tokens_spent: state.tokens_spent.unwrap_or(now.progress.tokens_spent),
        };
        self.restore(SavedState {
            progress,
            student,
            optimizer,
            teacher,
        });
        Ok(())
    }
}
