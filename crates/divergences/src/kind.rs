//! Which divergence, over which support.

use crate::error::{DivergenceError, Result};

/// A divergence between the teacher's distribution `p_T` and the student's `p_S` at one position.
///
/// Convention (TRL, verl and the OPSD code): `β = 0` is forward KL, `β = 1` is reverse KL.
///
/// In a run file (serde): `"forward_kl"`, `"reverse_kl"`, or `{ jsd = β }`; `β` is checked to
/// lie in `[0, 1]` when read, and its endpoints read as the two KLs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Spelling", into = "Spelling")]
pub enum Divergence {
    /// Forward KL, `KL(p_T‖p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v))`: mode covering,
    /// the divergence of SFT and supervised distillation. `∂/∂z_S = (p_S − p_T) / τ`.
    ForwardKl,
    /// Reverse KL, `KL(p_S‖p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v))`: mode seeking, the
    /// divergence of on-policy distillation. `∂/∂z_S = p_S ⊙ (d − E_{p_S}[d]) / τ`,
    /// `d = log p_S − log p_T`.
    ReverseKl,
    /// Generalized Jensen–Shannon divergence with `m = β p_T + (1−β) p_S`:
    /// `JSD_β = β KL(p_T‖m) + (1−β) KL(p_S‖m)` for `0 < β < 1`, and exactly the forward KL at
    /// `β = 0` and the reverse KL at `β = 1`.
    /// `∂/∂z_S = (1−β) p_S ⊙ (e − E_{p_S}[e]) / τ`, `e = log p_S − log m`.
    Jsd {
        /// Mixture weight of the teacher, in `[0, 1]`.
        beta: f64,
    },
}

impl Divergence {
    /// The generalized JSD with weight `beta`, checked to lie in `[0, 1]`; the endpoints
    /// resolve to the exact forward (`β = 0`) and reverse (`β = 1`) KL.
    pub fn jsd(beta: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&beta) {
            return Err(DivergenceError::InvalidParameter {
                name: "beta",
                value: beta,
                expected: "a number in [0, 1] (0 = forward KL, 1 = reverse KL)",
            });
        }
        Ok(Self::Jsd { beta }.resolved())
    }

    /// Maps the JSD endpoints onto the exact KLs; other variants are returned unchanged.
    pub fn resolved(self) -> Self {
        match self {
            Self::Jsd { beta } if beta <= 0.0 => Self::ForwardKl,
            Self::Jsd { beta } if beta >= 1.0 => Self::ReverseKl,
            other => other,
        }
    }

    /// The divergence with its weight checked (`β ∈ [0, 1]`) and its endpoints resolved.
    pub fn validate(self) -> Result<Self> {
        match self {
            Self::Jsd { beta } => Self::jsd(beta),
            other => Ok(other),
        }
    }
}

/// How a run file writes a [`Divergence`].
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Spelling {
    ForwardKl,
    ReverseKl,
    Jsd(f64),
}

impl TryFrom<Spelling> for Divergence {
    type Error = DivergenceError;

    fn try_from(spelling: Spelling) -> Result<Self> {
        match spelling {
            Spelling::ForwardKl => Ok(Self::ForwardKl),
            Spelling::ReverseKl => Ok(Self::ReverseKl),
            Spelling::Jsd(beta) => Self::jsd(beta),
        }
    }
}

impl From<Divergence> for Spelling {
    fn from(divergence: Divergence) -> Self {
        match divergence {
            Divergence::ForwardKl => Self::ForwardKl,
            Divergence::ReverseKl => Self::ReverseKl,
            Divergence::Jsd { beta } => Self::Jsd(beta),
        }
    }
}

/// Over which outcomes a divergence is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// The full vocabulary.
    Full,
    /// The teacher's `k` most likely tokens plus one bucket holding the rest of the mass
    /// (for both distributions): `p̃ = (p(v_1), …, p(v_k), 1 − Σ_i p(v_i))`.
    TeacherTopK(usize),
    /// As [`Support::TeacherTopK`], with the support taken from the student's `k` largest logits.
    StudentTopK(usize),
}

impl Support {
    /// The number of singled-out tokens, or `None` when the support is (effectively) the
    /// full vocabulary of size `vocab`.
    pub(crate) fn top_k(self, vocab: usize) -> Result<Option<usize>> {
        let k = match self {
            Self::Full => return Ok(None),
            Self::TeacherTopK(k) | Self::StudentTopK(k) => k,
        };
        if k == 0 {
            return Err(DivergenceError::InvalidParameter {
                name: "k",
                value: 0.0,
                expected: "at least 1 token in a top-k support",
            });
        }
        Ok((k < vocab).then_some(k))
    }
}

/// Options shared by every full-logit divergence call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DivergenceOptions {
    /// The divergence.
    pub divergence: Divergence,
    /// The support it is evaluated on.
    pub support: Support,
    /// Softmax temperature `τ > 0` applied to both student and teacher logits:
    /// `p = softmax(z / τ)`. Teacher log-probs given as a precomputed top-k are used as they are.
    pub temperature: f64,
    /// Positions evaluated at once (default 32). Forward and backward each hold about six
    /// `chunk_size × V` f32 temporaries beyond the logits and their gradient: 38 MB at
    /// V = 49,152. Larger chunks amortize per-op overhead on GPUs.
    pub chunk_size: usize,
}

impl Default for DivergenceOptions {
    fn default() -> Self {
        Self {
            divergence: Divergence::ReverseKl,
            support: Support::Full,
            temperature: 1.0,
            chunk_size: 32,
        }
    }
}

impl DivergenceOptions {
    /// Options for `divergence` on the full vocabulary at temperature 1.
    pub fn new(divergence: Divergence) -> Self {
        Self {
            divergence,
            ..Self::default()
        }
    }

    /// Sets the support.
    pub fn with_support(mut self, support: Support) -> Self {
        self.support = support;
        self
    }

    /// Sets the temperature `τ`.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    /// Sets the number of positions evaluated at once.
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Checks every field; the JSD endpoints resolve to the exact KLs.
    pub(crate) fn validated(self) -> Result<Self> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(DivergenceError::InvalidParameter {
                name: "temperature",
                value: self.temperature,
                expected: "a finite number > 0",
            });
        }
        if self.chunk_size == 0 {
            return Err(DivergenceError::InvalidParameter {
                name: "chunk_size",
                value: 0.0,
                expected: "at least 1 position per chunk",
            });
        }
        Ok(Self {
            divergence: self.divergence.validate()?,
            ..self
        })
    }
}
