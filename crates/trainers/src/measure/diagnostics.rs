//! What to watch besides the loss: entropies, the teacher/student top-k overlap at
//! student-visited states ("Rethinking On-Policy Distillation": successful OPD concentrates
//! 97–99 % of the mass on a small shared set), and the collapse watch.

use burn::tensor::{Tensor, backend::Backend};

use opd_divergences::{RowSummary, host_values};

use crate::config::CollapseWatch;

/// The `k` most likely tokens and their log-probs at each position, on the host.
#[derive(Debug, Clone)]
pub(crate) struct TopSets {
    pub ids: Vec<i64>,
    pub log_probs: Vec<f32>,
    pub k: usize,
}

impl TopSets {
    /// From a precomputed top-k `[B, R, k']`, keeping its first `k` entries.
    pub fn from_parts<B: Backend>(
        ids: Tensor<B, 3, burn::tensor::Int>,
        log_probs: Tensor<B, 3>,
    ) -> Self {
        let k = ids.dims()[2];
        Self {
            ids: ids.into_data().convert::<i64>().into_vec().expect("ids"),
            log_probs: host_values(log_probs),
            k,
        }
    }
}

impl From<RowSummary> for TopSets {
    fn from(summary: RowSummary) -> Self {
        Self {
            ids: summary.ids,
            log_probs: summary.log_probs,
            k: summary.k,
        }
    }
}

/// Sums over positions of the overlap diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Overlap {
    /// `Σ |S ∩ T| / k`.
    pub overlap: f64,
    /// `Σ Σ_{v ∈ S∩T} p_S(v)`.
    pub student_mass: f64,
    /// `Σ Σ_{v ∈ S∩T} p_T(v)`.
    pub teacher_mass: f64,
    /// Positions counted.
    pub positions: usize,
}

impl Overlap {
    /// Adds another worker's positions.
    pub fn merge(&mut self, other: &Overlap) {
        self.overlap += other.overlap;
        self.student_mass += other.student_mass;
        self.teacher_mass += other.teacher_mass;
        self.positions += other.positions;
    }

    /// Adds the positions `mask` selects: `S` the student's top-k, `T` the teacher's (both of
    /// the same `k`).
    pub fn add(&mut self, student: &TopSets, teacher: &TopSets, mask: &[bool]) {
        let k = student.k.min(teacher.k);
        for (p, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
            let s_ids = &student.ids[p * student.k..p * student.k + k];
            let t_ids = &teacher.ids[p * teacher.k..p * teacher.k + k];
            let mut shared = 0;
            for (i, id) in s_ids.iter().enumerate() {
                if let Some(j) = t_ids.iter().position(|t| t == id) {
                    shared += 1;
                    self.student_mass += (student.log_probs[p * student.k + i] as f64).exp();
                    self.teacher_mass += (teacher.log_probs[p * teacher.k + j] as f64).exp();
                }
            }
            self.overlap += shared as f64 / k as f64;
            self.positions += 1;
        }
    }
}

/// Tracks the first step's response length and reports thresholds crossed.
#[derive(Debug, Clone, Default)]
pub(crate) struct CollapseState {
    pub first_length: Option<f64>,
}

impl CollapseState {
    /// The warnings for this step's mean entropy and mean response length.
    pub fn check(&mut self, watch: &CollapseWatch, entropy: f64, length: f64) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(min) = watch.min_entropy
            && entropy < min
        {
            warnings.push(format!(
                "student entropy {entropy:.4} nats/token is below collapse.min_entropy = {min}"
            ));
        }
        let first = *self.first_length.get_or_insert(length);
        if let Some(ratio) = watch.max_length_ratio
            && first > 0.0
            && (length > first * ratio || length < first / ratio)
        {
            warnings.push(format!(
                "mean response length {length:.1} drifted past collapse.max_length_ratio = \
                 {ratio} × the first step's {first:.1}"
            ));
        }
        warnings
    }
}
