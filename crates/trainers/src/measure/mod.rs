//! What a step measures: the metrics of a step as they are written ([`metrics`]), the
//! accumulator the updates add to ([`telemetry`]), the quantities to watch besides the loss
//! ([`diagnostics`]) and where a micro-batch's are taken from the logits it forms
//! ([`diagnosis`]).

pub(crate) mod diagnosis;
pub(crate) mod diagnostics;
pub mod metrics;
pub(crate) mod telemetry;
