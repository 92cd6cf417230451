use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::{ConnectorError, Sink, Source, Value};

/// One step of a key path in a config file: `sink.columns[2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// A problem found while checking a config without I/O, with the path of the
/// offending key relative to the connector's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: Vec<PathSegment>,
    pub message: String,
}

impl ConfigProblem {
    /// A problem at a top-level key of the connector's section.
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        ConfigProblem {
            path: vec![PathSegment::Key(key.to_string())],
            message: message.into(),
        }
    }
}

/// A deserialization error with the path where it happened.
pub type FieldError = ConfigProblem;

/// What kind of mistake a [`FieldError`] from [`deserialize`] is: the
/// runtime steps over unknown and missing keys to report every mistake of a
/// file at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfit {
    /// A key the section does not take; `expected` lists those it takes.
    UnknownKey {
        key: String,
        expected: Option<String>,
    },
    /// A key the section needs is absent.
    MissingKey { key: String },
    /// Anything else (a wrong type, a bad value).
    Other,
}

impl ConfigProblem {
    /// The kind of mistake this is. serde reports unknown and missing
    /// fields only as text (serde_json's error keeps no kind), made by the
    /// default `de::Error::unknown_field` and `missing_field`: the texts
    /// are read here, beside [`deserialize`], and pinned by a test so that
    /// a serde that words them otherwise fails the build's tests rather
    /// than the reports.
    pub fn misfit(&self) -> Misfit {
        let backticked = |prefix: &str| {
            let rest = self.message.strip_prefix(prefix)?;
            Some(rest[..rest.find('`')?].to_string())
        };
        if let Some(key) = backticked("unknown field `") {
            let expected = self
                .message
                .split_once(", expected ")
                .map(|(_, e)| e.to_string());
            Misfit::UnknownKey { key, expected }
        } else if let Some(key) = backticked("missing field `") {
            Misfit::MissingKey { key }
        } else {
            Misfit::Other
        }
    }
}

/// Deserializes a connector's config section (the section without its `type`
/// key), keeping the path of the first error. Connector configs should use
/// `#[serde(deny_unknown_fields)]`; the runtime calls this repeatedly to
/// report every error of a file, not just the first.
pub fn deserialize<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(PathSegment::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(PathSegment::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => {
                    Some(PathSegment::Key(variant.clone()))
                }
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        ConfigProblem {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

/// What the runtime tells a connector when it builds it.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The pipeline's name (unique in a deployment).
    pub pipeline: String,
    /// The pipeline ends when its input is read (`ferry run --once`): a
    /// record still incomplete at the end of the input (a line without its
    /// newline, a quoted CSV field that never closes) will not be completed
    /// by more input, and the source should say so rather than wait.
    pub once: bool,
    /// Set when ferry is stopping: a wait of the connector's own (a retry's
    /// backoff) should end then, so that shutdown is never held up by it.
    pub stopping: Stopping,
    /// The local files this pipeline writes (its sink's outputs, its
    /// dead-letter file): a source reading local files must not read these
    /// (a link or another name can hide them from the check at load time).
    pub writes: Vec<PathBuf>,
    /// The pipeline's `retries` counter, for the retries a connector makes by
    /// itself (a client library reconnecting, a request sent again): the
    /// operator sees them beside the runtime's restarts.
    pub retries: Retries,
}

/// Counts a connector's own retries into its pipeline's `retries`.
#[derive(Debug, Clone, Default)]
pub struct Retries(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Retries {
    /// Counts into `counter`.
    pub fn new(counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Retries {
        Retries(counter)
    }

    /// One more retry.
    pub fn count(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many so far.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether ferry is stopping, for connectors that wait by themselves.
#[derive(Debug, Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// Stopping once `stop` holds `true`.
    pub fn new(stop: tokio::sync::watch::Receiver<bool>) -> Stopping {
        Stopping(stop)
    }

    /// Never stopping (`ferry validate`, tests).
    pub fn never() -> Stopping {
        Stopping(tokio::sync::watch::channel(false).1)
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when ferry is stopping (never, for [`Stopping::never`]).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps for `d` unless ferry stops first; false when it stopped.
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.wait() => false,
        }
    }
}

/// How a sink makes replays harmless, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Stores the source positions in the same transaction as the data.
    Transactional,
    /// Writes with ids derived from the record or its position: a replay
    /// overwrites instead of duplicating.
    Idempotent,
    /// Neither: a replay after a crash may write some records twice.
    AtLeastOnce,
}

/// A parsed source config: validated without I/O, then built.
#[async_trait]
pub trait SourceConfig: Send + Sync + fmt::Debug {
    /// Checks that need no I/O. Paths are relative to the `source` section.
    fn validate(&self) -> Vec<ConfigProblem> {
        Vec::new()
    }

    /// One line for humans, e.g. `file /data/in/*.jsonl (json)`. No secrets.
    fn describe(&self) -> String;

    /// Whether the source can replay from a committed position. Only a
    /// replayable source can be exactly-once.
    fn replayable(&self) -> bool {
        true
    }

    /// Where this source, as configured, weakens an otherwise exactly-once
    /// pipeline, in words for `ferry validate`; `None` when it does not.
    fn delivery_caveat(&self) -> Option<&'static str> {
        None
    }

    /// The local files this source reads, as globs (`/data/in/*.jsonl`),
    /// each with the key of the section that names it, so the runtime can
    /// refuse a pipeline whose sink or dead-letter file would be read back
    /// as its input. Sources that read no local files keep the default.
    fn local_inputs(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Creates the source. May do I/O (open files, connect); spawns no tasks.
    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ConnectorError>;

    /// Checks that what the connector needs is there — the server answers,
    /// the table exists — without changing anything. Run by `ferry validate
    /// --check-connections`; connectors with nothing to check keep the default.
    async fn check(&self, _ctx: &BuildContext) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// What measures this source's lag, if it can be measured. May do I/O
    /// (connect); the runtime builds it while the pipeline runs and builds
    /// it again after a failure. Sources that cannot keep the default.
    async fn backlog(
        &self,
        _ctx: &BuildContext,
    ) -> Result<Option<Box<dyn crate::Backlog>>, ConnectorError> {
        Ok(None)
    }

    /// The position from which the source would resume `partition` (a key
    /// of [`crate::Position`]'s partition) at `offset`, for an operator who
    /// moves a pipeline's positions (the admin API's `PUT .../offsets`, as
    /// Kafka Connect's KIP-875 allows). `committed` is the partition's
    /// committed position, if it has one. A position the source could not
    /// resume from is refused with `Fatal(why)`; `Retriable` when it could
    /// not be checked (a server down). Called while the pipeline is paused;
    /// may do I/O. The default refuses every position.
    async fn resume_point(
        &self,
        _ctx: &BuildContext,
        _partition: &str,
        _offset: &Value,
        _committed: Option<&crate::Position>,
    ) -> Result<crate::Position, ConnectorError> {
        Err(ConnectorError::Fatal(
            "this source cannot be given positions".to_string(),
        ))
    }
}

/// A [`SourceConfig::resume_point`] for a partition that must be one the
/// pipeline has committed: that partition at `offset`.
pub fn committed_partition_at(
    offset: &Value,
    committed: Option<&crate::Position>,
) -> Result<crate::Position, ConnectorError> {
    match committed {
        Some(c) => Ok(crate::Position {
            partition: c.partition.clone(),
            offset: offset.clone(),
        }),
        None => Err(ConnectorError::Fatal(
            "not a partition this pipeline has committed (GET .../offsets lists them)".to_string(),
        )),
    }
}

/// A parsed sink config: validated without I/O, then built.
#[async_trait]
pub trait SinkConfig: Send + Sync + fmt::Debug {
    /// Checks that need no I/O. Paths are relative to the `sink` section.
    fn validate(&self) -> Vec<ConfigProblem> {
        Vec::new()
    }

    /// One line for humans, e.g. `file /data/out.jsonl (json)`. No secrets.
    fn describe(&self) -> String;

    /// How this sink, as configured, makes replays harmless.
    fn delivery(&self) -> Delivery;

    /// What `validate` should add to the delivery guarantee for this sink
    /// as configured, if anything (e.g. what becomes of a record that is not
    /// a replay but shares its id with one written before).
    fn delivery_caveat(&self) -> Option<&'static str> {
        None
    }

    /// Whether the sink writes each record to the destination a `route`
    /// transform gave it ([`crate::Record::destination`]): a table,
    /// collection, topic or index by name. A pipeline that routes records
    /// into a sink that does not is refused at load.
    fn takes_destinations(&self) -> bool {
        false
    }

    /// Why the sink could never write to a destination of this name (a
    /// `route` step's `map` or `default`), checked when the file is loaded;
    /// `None` when it could.
    fn destination_problem(&self, _name: &str) -> Option<String> {
        None
    }

    /// The longest a record should wait before its batch is written, when
    /// the sink has a setting of its own for it; the pipeline's
    /// `delivery.flush_interval` is shortened to it.
    fn flush_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// The local files this sink writes (its output and any files it keeps
    /// beside it), each with the key of the section that names it, so the
    /// runtime can refuse a pipeline that reads its own output, and two
    /// pipelines writing one file. Sinks that write no local files keep the
    /// default.
    fn local_outputs(&self) -> Vec<(&'static str, PathBuf)> {
        Vec::new()
    }

    /// Creates the sink. May do I/O (open files, connect); spawns no tasks.
    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError>;

    /// Checks that what the connector needs is there — the server answers,
    /// the table exists — without changing anything. Run by `ferry validate
    /// --check-connections`; connectors with nothing to check keep the default.
    async fn check(&self, _ctx: &BuildContext) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A source connector as the runtime's registry knows it.
pub struct SourcePlugin {
    /// The value of `type:` that selects it.
    pub kind: &'static str,
    /// Parses the section (without `type`). Use [`deserialize`].
    pub parse: fn(&Value) -> Result<Box<dyn SourceConfig>, FieldError>,
    /// The JSON Schema of the section (without `type`), from the type that
    /// `parse` reads: [`schema_of`]`::<TheConfig>`.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

/// A sink connector as the runtime's registry knows it.
pub struct SinkPlugin {
    pub kind: &'static str,
    pub parse: fn(&Value) -> Result<Box<dyn SinkConfig>, FieldError>,
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

/// The schema of a connector's section, as [`SourcePlugin::schema`] wants
/// it: `T`'s own schema inline (the runtime adds the `type` key to it),
/// the types it uses as definitions of `generator`.
pub fn schema_of<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    T::json_schema(generator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        path: String,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        size: u32,
    }

    fn misfit(v: Value) -> (Vec<PathSegment>, Misfit) {
        let e = deserialize::<Section>(&v).unwrap_err();
        let m = e.misfit();
        (e.path, m)
    }

    #[test]
    fn serde_words_unknown_and_missing_keys_as_misfit_reads_them() {
        let (path, m) = misfit(serde_json::json!({"path": "a", "pth": 1}));
        assert_eq!(path, vec![PathSegment::Key("pth".into())]);
        assert_eq!(
            m,
            Misfit::UnknownKey {
                key: "pth".into(),
                expected: Some("`path` or `nested`".into())
            }
        );
        let (path, m) = misfit(serde_json::json!({"path": "a", "nested": {}}));
        assert_eq!(path, vec![PathSegment::Key("nested".into())]);
        assert_eq!(m, Misfit::MissingKey { key: "size".into() });
        let (_, m) = misfit(serde_json::json!({"path": 3}));
        assert_eq!(m, Misfit::Other);
    }
}
