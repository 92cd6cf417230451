//! Lag: how much of a source's input lies past the committed positions, in
//! the source's own units, for the operator (the admin API, the metrics).

use async_trait::async_trait;

use crate::{ConnectorError, Positions};

/// Measures a source's lag. Built by [`crate::SourceConfig::backlog`],
/// beside the source (not inside it: the source is busy reading). The
/// runtime calls it every few seconds while the pipeline runs, bounds each
/// call by a timeout, and drops it when the pipeline ends: it may hold a
/// connection of its own.
#[async_trait]
pub trait Backlog: Send {
    /// The lag of each partition the source knows of, measured from
    /// `committed` (a partition absent from it starts where the source
    /// would start it). May do I/O; blocking calls go to
    /// `spawn_blocking`.
    async fn measure(&mut self, committed: &Positions) -> Result<Vec<Lag>, ConnectorError>;
}

/// One partition's lag.
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    /// The partition's key, as in positions.
    pub partition: String,
    /// How people know it (a file's path, `topic/partition`).
    pub label: String,
    /// How much input lies past the committed position, in `unit`.
    pub amount: f64,
    /// `bytes` (files), `messages` (Kafka), `rows` (tables), `seconds`
    /// (change streams), `records` (the generator).
    pub unit: &'static str,
    /// Whether `amount` is an estimate rather than a count (said as such).
    pub estimate: bool,
}
