//! A micro-batch's diagnostics (the student's and teacher's entropies, their top-k overlap) on
//! logits the step forms anyway: the blocks the output head fused with a loss forms, shown to
//! [`Diagnosis::block`]; when no loss formed any, the formed logits or a projection of the
//! hidden states, a block of rows at a time ([`diagnose_formed`]).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use opd_divergences::TrainingBackend;
use opd_divergences::{LogitBlock, TeacherTarget, head_logits};
use opd_teachers::TeacherOutput;

use crate::measure::telemetry::{RowTeachers, Telemetry};
use crate::method::Forward;
use crate::micro::Micro;

/// Logits measured at once: 8 Mi (32 MB), so the measurement's few temporaries stay small next
/// to the loss's block.
const SUB_BLOCK_ELEMENTS: usize = 1 << 23;

/// The diagnostics of one micro-batch, measured block by block.
pub(crate) struct Diagnosis {
    /// Top-k of the overlap.
    pub k: usize,
    /// Which teacher scored each row (empty with one).
    pub of_row: Vec<usize>,
    /// The rows' width `R`.
    pub width: usize,
    /// What the observed blocks measured.
    pub measured: Telemetry,
    /// Whether a loss showed its blocks.
    pub observed: bool,
}

impl Diagnosis {
    /// Nothing measured yet.
    pub fn new(k: usize, of_row: &[usize], width: usize) -> Self {
        Self {
            k,
            of_row: of_row.to_vec(),
            width,
            measured: Telemetry::default(),
            observed: false,
        }
    }

    /// Measures a block of logits a fused head formed, at its `counted` positions (flat
    /// `[m·R]`), [`SUB_BLOCK_ELEMENTS`] logits at a time: the teacher's side from the block's
    /// own teacher logits, or from the rows of a top-k teacher.
    pub fn block<B: TrainingBackend>(
        &mut self,
        block: LogitBlock<B>,
        teacher: Option<&TeacherOutput<B>>,
        counted: &[bool],
    ) {
        self.observed = true;
        let [rows, vocab] = block.student.dims();
        let step = (SUB_BLOCK_ELEMENTS / vocab.max(1)).max(1);
        for start in (0..rows).step_by(step) {
            let len = step.min(rows - start);
            let part = LogitBlock {
                positions: block.positions[start..start + len].to_vec(),
                student: block.student.clone().narrow(0, start, len),
                teacher: block.teacher.clone().map(|t| t.narrow(0, start, len)),
            };
            self.sub_block(part, teacher, counted);
        }
    }

    fn sub_block<B: TrainingBackend>(
        &mut self,
        block: LogitBlock<B>,
        teacher: Option<&TeacherOutput<B>>,
        counted: &[bool],
    ) {
        let positions = &block.positions;
        let counted: Vec<bool> = positions.iter().map(|&p| counted[p]).collect();
        let of_position: Vec<usize> = match self.of_row.is_empty() {
            true => Vec::new(),
            false => positions
                .iter()
                .map(|&p| self.of_row[p / self.width.max(1)])
                .collect(),
        };
        let teacher = match (block.teacher, teacher) {
            (Some(logits), Some(output)) => Some(TeacherOutput::Distribution {
                target: TeacherTarget::Logits(logits.unsqueeze()),
                temperature: output.temperature(),
            }),
            (
                None,
                Some(TeacherOutput::Distribution {
                    target: TeacherTarget::TopK { ids, log_probs },
                    temperature,
                }),
            ) => {
                let rows = indices::<B>(positions, &log_probs.device());
                let flat = |k: usize| [ids.dims()[0] * ids.dims()[1], k];
                let k = ids.dims()[2];
                Some(TeacherOutput::Distribution {
                    target: TeacherTarget::TopK {
                        ids: ids
                            .clone()
                            .reshape(flat(k))
                            .select(0, rows.clone())
                            .unsqueeze(),
                        log_probs: log_probs
                            .clone()
                            .reshape(flat(k))
                            .select(0, rows)
                            .unsqueeze(),
                    },
                    temperature: *temperature,
                })
            }
            _ => None,
        };
        self.measured.diagnose::<B>(
            block.student.inner().unsqueeze(),
            teacher.as_ref(),
            &counted,
            self.k,
            RowTeachers {
                of_row: &of_position,
                width: 1,
            },
        );
    }
}

fn indices<B: AutodiffBackend>(positions: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
    Tensor::from_data(TensorData::new(data, [positions.len()]), device)
}

/// Batch rows per block of [`diagnose_formed`]: `rows · R · V` within 32 Mi elements (128 MB),
/// at least one row.
fn diagnosed_rows(width: usize, vocab: usize) -> usize {
    ((1usize << 25) / (width * vocab).max(1)).max(1)
}

/// The diagnostics of a micro-batch no loss showed its blocks of, without graph, a block of
/// rows at a time: the logits the loss formed, or a projection of the hidden states.
pub(crate) fn diagnose_formed<B: TrainingBackend>(
    forward: &Forward<B>,
    micro: &Micro<B>,
    k: usize,
    rows: RowTeachers<'_>,
    telemetry: &mut Telemetry,
) {
    let [m, width, _] = forward.hidden.dims();
    let teacher = micro.prepared.targets.teacher();
    let vocab = forward
        .head
        .as_ref()
        .map_or_else(|| forward.logits().dims()[2], |head| head.dims()[0]);
    let block = diagnosed_rows(width, vocab);
    for start in (0..m).step_by(block) {
        let range = start..(start + block).min(m);
        let logits = match (forward.logits.get(), &forward.head) {
            (None, Some(head)) => head_logits(
                forward.hidden.clone().inner().narrow(0, start, range.len()),
                head.clone().inner(),
            ),
            _ => forward.logits().inner().narrow(0, start, range.len()),
        };
        let of_row = match rows.of_row {
            [] => &[][..],
            all => &all[range.clone()],
        };
        telemetry.diagnose::<B>(
            logits,
            teacher.map(|t| t.rows(range.clone())).as_ref(),
            &micro.counted[start * width..range.end * width],
            k,
            RowTeachers { of_row, width },
        );
    }
}
