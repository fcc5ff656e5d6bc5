//! OPD's teachers: one, or several with each task routed to the one its `teacher` field names
//! (the first by default), as verl's MOPD and Tinker's multi-teacher recipe do.

use opd_divergences::TrainingBackend;
use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use opd_divergences::TeacherTarget;
use opd_policy::{Llama, SequenceBatch, Trainable};
use opd_tasks::Task;
use opd_teachers::{Request, Teacher, TeacherOutput};

use super::MicroBatch;
use crate::error::{Result, TrainError};
use opd_divergences::host_values;

/// OPD's teachers and the teacher of each task.
pub(super) struct Routed<B: TrainingBackend, M: Trainable<B> = Llama<B>> {
    teachers: Vec<(String, Box<dyn Teacher<B, M>>)>,
    /// Index into `teachers` of each task's teacher.
    route: Vec<usize>,
}

impl<B: TrainingBackend, M: Trainable<B>> Routed<B, M> {
    /// An error without a teacher, with two of one name, or for a task that names a teacher
    /// the run does not have (naming the task).
    pub fn new(teachers: Vec<(String, Box<dyn Teacher<B, M>>)>, tasks: &[Task]) -> Result<Self> {
        if teachers.is_empty() {
            return Err(TrainError::Config {
                field: "teacher",
                value: "none".into(),
                expected: "a teacher model for OPD (`[teacher]` or `[[teachers]]` in a run \
                           file, `TrainerBuilder::teacher` in code)",
            });
        }
        let names: Vec<&str> = teachers.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(name) = names
            .iter()
            .enumerate()
            .find_map(|(i, n)| (n.is_empty() || names[..i].contains(n)).then_some(*n))
        {
            return Err(TrainError::Config {
                field: "teachers",
                value: format!("{name:?}"),
                expected: "a distinct, non-empty name for each teacher",
            });
        }
        let route =
            tasks
                .iter()
                .enumerate()
                .map(|(index, task)| match &task.teacher {
                    None => Ok(0),
                    Some(name) => names.iter().position(|n| n == name).ok_or_else(|| {
                        TrainError::Task {
                            index,
                            problem: format!(
                                "names teacher `{name}`, which the run does not have (it has {})",
                                names.join(", ")
                            ),
                        }
                    }),
                })
                .collect::<Result<_>>()?;
        Ok(Self { teachers, route })
    }

    /// The teachers' names when there are several (per-teacher metrics); empty for one.
    pub fn names(&self) -> Vec<String> {
        match self.teachers.len() {
            1 => Vec::new(),
            _ => self.teachers.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    /// The scores of `micro`'s rows, each by its task's teacher, in the micro-batch's layout,
    /// and the teacher of each row (empty with one teacher).
    pub fn outputs(
        &self,
        student: &M,
        micro: &MicroBatch<'_, B>,
        request: &Request,
    ) -> Result<(TeacherOutput<B>, Vec<usize>)> {
        let of_row: Vec<usize> = (0..micro.chunk.len())
            .map(|i| self.route[micro.rows.tasks[micro.chunk[i]]])
            .collect();
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, &t) in of_row.iter().enumerate() {
            groups.entry(t).or_default().push(i);
        }
        let labels = match self.teachers.len() {
            1 => Vec::new(),
            _ => of_row,
        };
        if groups.len() == 1 {
            let t = *groups.keys().next().expect("a micro-batch has rows");
            let output = self.teachers[t].1.outputs(student, micro.batch, request)?;
            return Ok((output, labels));
        }
        let batch = micro.batch;
        let mut parts = Vec::with_capacity(groups.len());
        for (t, rows) in groups {
            let sub = SequenceBatch::new(
                rows.iter().map(|&i| batch.contexts()[i].clone()).collect(),
                rows.iter().map(|&i| batch.responses()[i].clone()).collect(),
            )?;
            let output = self.teachers[t].1.outputs(student, &sub, request)?;
            parts.push((rows, sub.response_width(), output));
        }
        let device = micro.old.device();
        let output = merge(parts, batch.len(), batch.response_width(), &device);
        Ok((output, labels))
    }
}

/// Outputs of row subsets (their rows, their own response width, the output) put back in one
/// `[m, width, ·]` output; padding as a teacher leaves it (zeros; top-k: id 0 and −∞). Every
/// part answered the same request, so they share a support and a temperature.
fn merge<B: TrainingBackend>(
    parts: Vec<(Vec<usize>, usize, TeacherOutput<B>)>,
    rows: usize,
    width: usize,
    device: &B::Device,
) -> TeacherOutput<B> {
    let scatter = |flat: &mut [f32], values: &[f32], part_rows: &[usize], w: usize, n| {
        scatter(flat, values, part_rows, w, width, n)
    };
    let temperature = parts[0].2.temperature();
    match &parts[0].2 {
        TeacherOutput::SampledToken { .. } => {
            let mut flat = vec![0.0; rows * width];
            for (part_rows, w, output) in &parts {
                if let TeacherOutput::SampledToken { log_probs, .. } = output {
                    scatter(
                        &mut flat,
                        &host_values(log_probs.clone().inner()),
                        part_rows,
                        *w,
                        1,
                    );
                }
            }
            TeacherOutput::SampledToken {
                log_probs: Tensor::from_data(TensorData::new(flat, [rows, width]), device),
                temperature,
            }
        }
        TeacherOutput::Distribution {
            target: TeacherTarget::TopK { ids: first, .. },
            ..
        } => {
            let k = first.dims()[2];
            let mut ids = vec![0i64; rows * width * k];
            let mut log_probs = vec![f32::NEG_INFINITY; rows * width * k];
            for (part_rows, w, output) in &parts {
                if let TeacherOutput::Distribution {
                    target:
                        TeacherTarget::TopK {
                            ids: part_ids,
                            log_probs: part_lps,
                        },
                    ..
                } = output
                {
                    let part_ids: Vec<i64> = part_ids
                        .clone()
                        .inner()
                        .into_data()
                        .convert::<i64>()
                        .into_vec::<i64>()
                        .expect("ids");
                    self::scatter(&mut ids, &part_ids, part_rows, *w, width, k);
                    scatter(
                        &mut log_probs,
                        &host_values(part_lps.clone().inner()),
                        part_rows,
                        *w,
                        k,
                    );
                }
            }
            TeacherOutput::Distribution {
                target: TeacherTarget::TopK {
                    ids: Tensor::from_data(TensorData::new(ids, [rows, width, k]), device),
                    log_probs: Tensor::from_data(
                        TensorData::new(log_probs, [rows, width, k]),
                        device,
                    ),
                },
                temperature,
            }
        }
        TeacherOutput::Distribution { target, .. } => {
            // Full logits, given or formed from a teacher's hidden states (teachers of other
            // widths cannot share a head).
            let vocab = match target {
                TeacherTarget::Hidden { head, .. } => head.dims()[0],
                TeacherTarget::Logits(first) => first.dims()[2],
                TeacherTarget::TopK { ids, .. } => ids.dims()[2],
            };
            let mut flat = vec![0.0; rows * width * vocab];
            for (part_rows, w, output) in &parts {
                if let TeacherOutput::Distribution { target, .. } = output
                    && let Some(logits) = target.logits()
                {
                    scatter(
                        &mut flat,
                        &host_values(logits.inner()),
                        part_rows,
                        *w,
                        vocab,
                    );
                }
            }
            TeacherOutput::Distribution {
                target: TeacherTarget::Logits(Tensor::from_data(
                    TensorData::new(flat, [rows, width, vocab]),
                    device,
                )),
                temperature,
            }
        }
    }
}

/// A part's values `[m_t, part_width, n]` written into `[·, width, n]` at its rows.
fn scatter<T: Copy>(
    flat: &mut [T],
    values: &[T],
    part_rows: &[usize],
    part_width: usize,
    width: usize,
    n: usize,
) {
    for (r, &row) in part_rows.iter().enumerate() {
        for t in 0..part_width.min(width) {
            let (from, to) = ((r * part_width + t) * n, (row * width + t) * n);
            flat[to..to + n].copy_from_slice(&values[from..from + n]);
        }
    }
}
