//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! A checkpoint is a folder `step-000012/` (the number of steps taken) holding
//! - `trainable.safetensors`: the student's trainable parameters (every weight, or only the
//!   LoRA adapters), f32, named by module path, their parameter ids in the metadata;
//! - `optimizer.bin`: AdamW's moments and step counts (a burn record, full precision);
//! - `teacher.safetensors`: an EMA teacher's average of the same parameters, when it has one;
//! - `state.json`: the step, the position in the task order, the collapse watch's baseline and
//!   the config.
//!
//! Rollout seeds are `seed + step`, so the step is the sampler's whole random state. A
//! checkpoint is written as `step-000012.tmp/` and renamed when complete: a folder without the
//! suffix is never partial, and a killed run resumes from the last complete one.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::optim::Optimizer;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use opd_divergences::DivergenceBackend;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::named::{self, Named};
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
    config: TrainConfig,
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

/// Writes `dir/name` (the folder exists).
fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| problem(&path, e))
}

impl<B: AutodiffBackend + DivergenceBackend> Trainer<B> {
    /// Saves what [`Trainer::resume`] needs into `dir` (see the [module](self) docs), written
    /// as `dir.tmp` and renamed: `dir` is complete or absent.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let tmp = dir.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| problem(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| problem(&tmp, e))?;
        let trainable = named::collect(self.student(), &|_, trainable| trainable);
        write(&tmp, TRAINABLE, &encode(&trainable))?;
        let optimizer = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(self.optimizer.to_record(), ())
            .map_err(|e| problem(&tmp.join(OPTIMIZER), e))?;
        write(&tmp, OPTIMIZER, &optimizer)?;
        if let Some(teacher) = self.teacher_weights() {
            let paths: BTreeSet<String> = trainable.iter().map(|t| t.path.clone()).collect();
            let moved = named::collect(teacher, &|path, _| paths.contains(path));
            write(&tmp, TEACHER, &encode(&moved))?;
        }
        let state = State {
            steps_done: self.step,
            tasks_drawn: self.order.drawn(),
            first_response_length: self.collapse.first_length,
            config: self.config.clone(),
        };
        let json = serde_json::to_string_pretty(&state).expect("state serializes");
        write(&tmp, STATE, json.as_bytes())?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| problem(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| problem(dir, e))
    }

    /// Continues from the checkpoint in `dir`: this trainer must be built as the saved one was
    /// (the same config but for `steps`, initial model, tasks and teacher); the student's
    /// trainable weights, the optimizer, an EMA teacher, the step and the task order are then
    /// those of the saved run, and the next steps are the ones it would have taken.
    pub fn resume(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let state_path = dir.join(STATE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| problem(&state_path, e))?;
        let state: State = serde_json::from_str(&text).map_err(|e| problem(&state_path, e))?;
        let saved = TrainConfig {
            steps: self.config.steps,
            ..state.config.clone()
        };
        if saved != self.config {
            return Err(problem(
                &state_path,
                "the run was saved with another config (only `steps` may change on resume)",
            ));
        }
        let trainable = dir.join(TRAINABLE);
        let student = named::replace(self.student().clone(), decode(&trainable)?)
            .map_err(|e| problem(&trainable, e))?;
        self.student = Some(student);
        let optimizer_path = dir.join(OPTIMIZER);
        let bytes = std::fs::read(&optimizer_path).map_err(|e| problem(&optimizer_path, e))?;
        let device = crate::trainer::device_of(self.student());
        let record = BinBytesRecorder::<FullPrecisionSettings>::default()
            .load(bytes, &device)
            .map_err(|e| problem(&optimizer_path, e))?;
        self.optimizer = self.optimizer.clone().load_record(record);
        if let Some(teacher) = self.teacher_weights().cloned() {
            let path = dir.join(TEACHER);
            let weights = named::replace(teacher, decode(&path)?).map_err(|e| problem(&path, e))?;
            self.set_teacher_weights(weights);
        }
        self.step = state.steps_done;
        self.order.skip_to(state.tasks_drawn);
        self.collapse.first_length = state.first_response_length;
        Ok(())
    }
}
