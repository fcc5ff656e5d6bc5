//! What a step measures, built from what the losses returned: the accumulator the updates add
//! to, and the [`StepMetrics`] it becomes.

use opd_divergences::TrainingBackend;
use std::collections::BTreeMap;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use opd_divergences::{TeacherTarget, summarize};
use opd_teachers::TeacherOutput;

use crate::measure::diagnostics::{CollapseState, Overlap, TopSets};
use crate::measure::metrics::{Phases, Running, StepMetrics, TeacherMetrics};
use crate::method::{Clipped, SequenceAdvantages};
use crate::rows::StepRows;

/// What a step's updates accumulate for its metrics.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Telemetry {
    entropy: Running,
    teacher_entropy: Running,
    divergence: Running,
    ratio: Running,
    clipped: Option<Clipped>,
    overlap: Overlap,
    losses: Running,
    parts: BTreeMap<String, f64>,
    pub grad_norm: f64,
    pub updates: usize,
    pub trained_tokens: usize,
    pub skipped: usize,
    pub warnings: Vec<String>,
    pub rows_without_privilege: usize,
    /// Per teacher (by index), in a run with several: divergence and overlap.
    per_teacher: BTreeMap<usize, (Running, Overlap)>,
}

/// Which teacher scored each row of a micro-batch, and the rows' width: a position `p` is
/// row `p / width`'s. Empty with one teacher.
#[derive(Clone, Copy)]
pub(crate) struct RowTeachers<'a> {
    pub of_row: &'a [usize],
    pub width: usize,
}

impl RowTeachers<'_> {
    /// The positions of `counted` whose row `teacher` scored.
    fn mask(&self, counted: &[bool], teacher: usize) -> Vec<bool> {
        counted
            .iter()
            .enumerate()
            .map(|(p, &c)| c && self.of_row[p / self.width.max(1)] == teacher)
            .collect()
    }

    fn teachers(&self) -> std::collections::BTreeSet<usize> {
        self.of_row.iter().copied().collect()
    }
}

impl Telemetry {
    /// One micro-batch's loss parts (their aggregated values), per-token divergence and
    /// importance ratios at the counted positions, and clip counts.
    pub fn add_loss(
        &mut self,
        parts: &[(&'static str, f64)],
        divergence: &[f32],
        ratio: &[f32],
        counted: &[bool],
        clipped: Option<Clipped>,
        rows: RowTeachers<'_>,
    ) {
        for teacher in rows.teachers() {
            let mask = rows.mask(counted, teacher);
            let entry = self.per_teacher.entry(teacher).or_default();
            entry.0.add_masked(divergence, &mask);
        }
        for (name, value) in parts {
            *self.parts.entry(name.to_string()).or_default() += value;
        }
        self.divergence.add_masked(divergence, counted);
        self.ratio.add_masked(ratio, counted);
        if let Some(c) = clipped {
            let total = self.clipped.get_or_insert_with(Clipped::default);
            total.low += c.low;
            total.high += c.high;
            total.tokens += c.tokens;
        }
    }

    /// Adds what another worker's losses measured (in a data-parallel step; the update-level
    /// values, `losses`, `grad_norm`, `updates`, `skipped` and `warnings`, are the same on
    /// every worker and stay as they are).
    pub fn absorb(&mut self, other: &Telemetry) {
        self.entropy.merge(&other.entropy);
        self.teacher_entropy.merge(&other.teacher_entropy);
        self.divergence.merge(&other.divergence);
        self.ratio.merge(&other.ratio);
        if let Some(c) = other.clipped {
            let total = self.clipped.get_or_insert_with(Clipped::default);
            total.low += c.low;
            total.high += c.high;
            total.tokens += c.tokens;
        }
        self.overlap.merge(&other.overlap);
        for (name, value) in &other.parts {
            *self.parts.entry(name.clone()).or_default() += value;
        }
        self.trained_tokens += other.trained_tokens;
        self.rows_without_privilege += other.rows_without_privilege;
        for (teacher, (divergence, overlap)) in &other.per_teacher {
            let entry = self.per_teacher.entry(*teacher).or_default();
            entry.0.merge(divergence);
            entry.1.merge(overlap);
        }
    }

    /// A telemetry with only this one's update-level values, for [`Self::absorb`] to add
    /// every worker's shares to in rank order.
    pub fn update_level(&self) -> Telemetry {
        Telemetry {
            losses: self.losses,
            grad_norm: self.grad_norm,
            updates: self.updates,
            skipped: self.skipped,
            warnings: self.warnings.clone(),
            ..Telemetry::default()
        }
    }

    /// A mini-batch's loss, once it was applied.
    pub fn add_update_loss(&mut self, loss: f64) {
        self.losses.add(loss);
    }

    /// The student's entropy, the teacher's (full logits) and their top-k overlap at the
    /// counted positions of a micro-batch.
    pub fn diagnose<B: TrainingBackend>(
        &mut self,
        logits: Tensor<B::InnerBackend, 3>,
        teacher: Option<&TeacherOutput<B>>,
        counted: &[bool],
        k: usize,
        rows: RowTeachers<'_>,
    ) {
        let teacher = match teacher {
            Some(TeacherOutput::Distribution {
                target: TeacherTarget::TopK { ids, log_probs },
                ..
            }) if k > 0 => {
                let k = k.min(ids.dims()[2]);
                Some(TopSets::from_parts(
                    ids.clone().inner().narrow(2, 0, k),
                    log_probs.clone().inner().narrow(2, 0, k),
                ))
            }
            // Full logits, given or formed from the teacher's hidden states.
            Some(TeacherOutput::Distribution {
                target,
                temperature,
            }) => target.logits().and_then(|logits| {
                let teacher = summarize(flat(logits), *temperature, k);
                self.teacher_entropy.add_masked(&teacher.entropy, counted);
                (k > 0).then(|| TopSets::from(teacher))
            }),
            _ => None,
        };
        let top = teacher.as_ref().map_or(0, |t| t.k);
        let student = summarize(flat(Tensor::<B, 3>::from_inner(logits)), 1.0, top);
        self.entropy.add_masked(&student.entropy, counted);
        if let Some(teacher) = teacher {
            let student = TopSets::from(student);
            self.overlap.add(&student, &teacher, counted);
            for t in rows.teachers() {
                let mask = rows.mask(counted, t);
                let entry = self.per_teacher.entry(t).or_default();
                entry.1.add(&student, &teacher, &mask);
            }
        }
    }

    /// Mean student entropy over the diagnosed positions (0 without any).
    pub fn entropy(&self) -> f64 {
        self.entropy.mean().unwrap_or(0.0)
    }

    /// The step's metrics; `collapse` the collapse watch's warnings, already raised.
    pub fn into_metrics(self, step: Step<'_>) -> StepMetrics {
        let rows = step.rows;
        let n = rows.responses.len().max(1) as f64;
        let lengths: Vec<usize> = rows.responses.iter().map(Vec::len).collect();
        let generated: usize = if step.sampled {
            lengths.iter().sum()
        } else {
            0
        };
        let scored: usize = lengths.iter().sum();
        let [rollout, teacher, train, optimizer] = step.seconds;
        let per_second = |tokens: usize, seconds: f64| {
            if seconds > 0.0 {
                tokens as f64 / seconds
            } else {
                0.0
            }
        };
        let clip = |count: fn(&Clipped) -> usize| {
            self.clipped
                .filter(|c| c.tokens > 0)
                .map(|c| count(&c) as f64 / c.tokens as f64)
        };
        let o = self.overlap;
        let overlap = |sum: f64| (o.positions > 0).then(|| sum / o.positions as f64);
        let updates = self.updates.max(1) as f64;
        let entropy = self.entropy();
        let mut warnings = self.warnings;
        warnings.extend(step.collapse);
        let teachers = self
            .per_teacher
            .iter()
            .filter_map(|(&t, (divergence, overlap))| {
                let name = step.teacher_names.get(t)?.clone();
                let per =
                    |sum: f64| (overlap.positions > 0).then(|| sum / overlap.positions as f64);
                Some((
                    name,
                    TeacherMetrics {
                        tokens: divergence.count(),
                        divergence_mean: divergence.mean(),
                        topk_overlap: per(overlap.overlap),
                        shared_mass_teacher: per(overlap.teacher_mass),
                    },
                ))
            })
            .collect();
        StepMetrics {
            step: step.index,
            learning_rate: step.learning_rate,
            loss: self.losses.mean().unwrap_or(f64::NAN),
            loss_parts: self
                .parts
                .into_iter()
                .map(|(k, v)| (k, v / updates))
                .collect(),
            divergence_mean: self.divergence.mean(),
            divergence_max: self.divergence.max(),
            entropy,
            teacher_entropy: self.teacher_entropy.mean(),
            response_length_mean: lengths.iter().sum::<usize>() as f64 / n,
            response_length_max: lengths.iter().copied().max().unwrap_or(0),
            clipped_fraction: rows.truncated.iter().filter(|&&t| t).count() as f64 / n,
            reward_mean: rows.outcomes.iter().map(|o| o.reward).sum::<f64>() / n,
            accuracy: rows.outcomes.iter().filter(|o| o.correct).count() as f64 / n,
            frac_reward_zero_std: step
                .advantages
                .and_then(|a| a.zero_std)
                .map(|(z, g)| z as f64 / g.max(1) as f64),
            clip_ratio_low: clip(|c| c.low),
            clip_ratio_high: clip(|c| c.high),
            ratio_mean: self.ratio.mean(),
            ratio_min: self.ratio.min(),
            ratio_max: self.ratio.max(),
            grad_norm: self.grad_norm,
            topk_overlap: overlap(o.overlap),
            shared_mass_student: overlap(o.student_mass),
            shared_mass_teacher: overlap(o.teacher_mass),
            rows_without_privilege: self.rows_without_privilege,
            skipped_updates: self.skipped,
            generated_tokens: generated,
            trained_tokens: self.trained_tokens,
            seconds: Phases {
                rollout,
                teacher,
                train,
                optimizer,
            },
            tokens_per_second: Phases {
                rollout: per_second(generated, rollout),
                teacher: per_second(scored, teacher),
                train: per_second(self.trained_tokens, train),
                optimizer: per_second(self.trained_tokens, optimizer),
            },
            exchange_seconds: 0.0,
            warnings,
            teachers,
        }
    }
}

/// What the step itself contributes to its metrics.
pub(crate) struct Step<'a> {
    /// Step index.
    pub index: usize,
    /// The step's rows.
    pub rows: &'a StepRows,
    /// Whether the rows were sampled (their tokens count as generated).
    pub sampled: bool,
    /// The step's sequence advantages.
    pub advantages: Option<&'a SequenceAdvantages>,
    /// The learning rate of the step's first update.
    pub learning_rate: f64,
    /// Seconds of rollouts, teacher scoring, forward + backward, optimizer.
    pub seconds: [f64; 4],
    /// The collapse watch's warnings.
    pub collapse: Vec<String>,
    /// The method's teachers, when it has several.
    pub teacher_names: Vec<String>,
}

/// The collapse watch on a step: warnings (logged) for the student's entropy and response
/// length; SFT, which fits fixed references, is not watched.
pub(crate) fn watch_collapse(
    state: &mut CollapseState,
    watch: &crate::config::CollapseWatch,
    sampled: bool,
    entropy: f64,
    rows: &StepRows,
) -> Vec<String> {
    if !sampled {
        return Vec::new();
    }
    let n = rows.responses.len().max(1) as f64;
    let length = rows.responses.iter().map(Vec::len).sum::<usize>() as f64 / n;
    state.check(watch, entropy, length)
}

/// `[B, R, V]` logits as rows `[B·R, V]`.
fn flat<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, r, v] = logits.dims();
    logits.reshape([b * r, v])
}
