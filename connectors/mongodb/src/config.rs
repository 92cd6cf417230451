//! `sink: {type: mongodb}`: parsed and validated without I/O.

use async_trait::async_trait;
use ferry_api::{
    BuildContext, ConfigProblem, ConnectorError, Delivery, Sink, SinkConfig, Source, SourceConfig,
};
use ferry_connector_kit::{Destination, IdName, IdSpec, redact_url};
use serde::Deserialize;

/// How documents are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// `insert`; a document whose `_id` exists already (a replay) is left
    /// as it is.
    Insert,
    /// `update` with `$set` and `upsert: true`: fields not in the record
    /// are kept.
    Upsert,
    /// `update` with the whole document and `upsert: true`.
    Replace,
}

/// `sink: {type: mongodb}`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct MongoSinkConfig {
    /// A MongoDB connection string (secrets through `${ENV}`).
    pub uri: String,
    /// The database written to.
    pub database: String,
    /// The collection written to (created by the server when missing):
    /// a name, or `{field: name}` for a record field that names it; a
    /// `route` transform's destination goes before either.
    pub collection: Destination,
    /// Default: `insert` with ids from positions (a replay is the same
    /// document: nothing to update, and inserts cost the server a fraction
    /// of upserts), `upsert` with ids from a field (a later record with the
    /// same key is newer).
    #[serde(default)]
    pub write: Option<WriteMode>,
    #[serde(default)]
    pub id: IdSpec,
}

impl MongoSinkConfig {
    pub(crate) fn write_mode(&self) -> WriteMode {
        self.write.unwrap_or(match self.id {
            IdSpec::Field { .. } => WriteMode::Upsert,
            IdSpec::Named(_) => WriteMode::Insert,
        })
    }

    /// The URI without its password, for messages and logs.
    pub(crate) fn redacted_uri(&self) -> String {
        redact_url(&self.uri)
    }
}

#[async_trait]
impl SinkConfig for MongoSinkConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        check_uri(&self.uri, &mut problems);
        // Names MongoDB refuses, caught before anything connects.
        if bad_database(&self.database) {
            problems.push(ConfigProblem::at("database", DATABASE_NAME));
        }
        match &self.collection {
            Destination::Name(name) if bad_collection(name) => {
                problems.push(ConfigProblem::at("collection", COLLECTION_NAME))
            }
            Destination::Field { field } if field.is_empty() => {
                problems.push(ConfigProblem::at("collection", "field must not be empty"))
            }
            _ => {}
        }
        match &self.id {
            IdSpec::Field { field } if field.is_empty() => {
                problems.push(ConfigProblem::at("id", "field must not be empty"))
            }
            IdSpec::Named(IdName::None) if self.write_mode() != WriteMode::Insert => {
                problems.push(ConfigProblem::at(
                    "id",
                    "none needs write: insert (upsert and replace find documents by _id)",
                ))
            }
            _ => {}
        }
        problems
    }

    fn describe(&self) -> String {
        format!(
            "mongodb {}.{} at {}",
            self.database,
            self.collection.describe(),
            self.redacted_uri()
        )
    }

    /// A routed record goes to the collection its route names.
    fn takes_destinations(&self) -> bool {
        true
    }

    fn destination_problem(&self, name: &str) -> Option<String> {
        bad_collection(name).then(|| format!("collection {name:?} {COLLECTION_NAME}"))
    }

    /// Ids derived from the record or its position make a replay overwrite
    /// what it wrote before; server-chosen ids make it write again.
    fn delivery(&self) -> Delivery {
        match self.id {
            IdSpec::Named(IdName::None) => Delivery::AtLeastOnce,
            _ => Delivery::Idempotent,
        }
    }

    fn delivery_caveat(&self) -> Option<&'static str> {
        match (&self.id, self.write_mode()) {
            (IdSpec::Field { .. }, WriteMode::Insert) => Some(
                "with ids from a field and `write: insert` the first record of each id is kept: a replay of it \
                 is skipped, a different record with the same id is refused (dead-lettered); \
                 `write: upsert` or `replace` keeps the latest instead",
            ),
            _ => None,
        }
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(crate::sink::MongoSink::new(
            self.clone(),
            &ctx.pipeline,
        )))
    }

    async fn check(&self, _ctx: &BuildContext) -> Result<(), ConnectorError> {
        let shown = self.redacted_uri();
        let client = crate::client::connect(&self.uri, &shown).await?;
        crate::client::ping(&client, &shown).await
    }
}

/// Whether a change-stream source first reads the documents already there.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Read every existing document (in `_id` order, resumably), then
    /// stream the changes made since the snapshot began.
    #[default]
    Initial,
    /// Stream only the changes made from the pipeline's first start on.
    Never,
}

/// What an `update` event carries besides its delta.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "snake_case")]
pub enum FullDocument {
    /// The document as it is when the event is read (`updateLookup`).
    #[default]
    UpdateLookup,
    /// Only the change (`updateDescription`); `document` is null.
    Delta,
}

/// `source: {type: mongodb}`: a change stream on a collection, a database
/// or the whole server.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    /// A MongoDB connection string of a replica set or sharded cluster
    /// (change streams need one); secrets through `${ENV}`.
    pub uri: String,
    /// Without it: every database of the server.
    #[serde(default)]
    pub database: Option<String>,
    /// Without it: every collection of `database`.
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    #[serde(default)]
    pub full_document: FullDocument,
    /// Documents or events per server round trip.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
}

fn default_batch_size() -> u32 {
    1000
}

impl MongoSourceConfig {
    pub(crate) fn redacted_uri(&self) -> String {
        redact_url(&self.uri)
    }

    /// What is watched, for keys and messages: `db.coll`, `db` or `*`.
    pub(crate) fn scope(&self) -> String {
        match (&self.database, &self.collection) {
            (Some(d), Some(c)) => format!("{d}.{c}"),
            (Some(d), None) => d.clone(),
            _ => "*".to_string(),
        }
    }
}

fn check_uri(uri: &str, problems: &mut Vec<ConfigProblem>) {
    if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
        problems.push(ConfigProblem::at(
            "uri",
            "must be a MongoDB connection string (mongodb://… or mongodb+srv://…)",
        ));
    }
}

fn bad_database(name: &str) -> bool {
    name.is_empty() || name.contains(['/', '\\', '.', ' ', '"', '$'])
}

pub(crate) fn bad_collection(name: &str) -> bool {
    name.is_empty()
        || name.contains(['$', '\0'])
        || name.starts_with(['.', ' '])
        || name.ends_with('.')
        || name.contains("..")
        || name.starts_with("system.")
        || name.len() > 255
}

const DATABASE_NAME: &str = "must be a non-empty name without / \\ . space \" $";
pub(crate) const COLLECTION_NAME: &str =
    "must be a non-empty name without $, NUL or empty dot-separated parts, not in system.*";

#[async_trait]
impl SourceConfig for MongoSourceConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        check_uri(&self.uri, &mut problems);
        if let Some(d) = &self.database
            && bad_database(d)
        {
            problems.push(ConfigProblem::at("database", DATABASE_NAME));
        }
        match (&self.database, &self.collection) {
            (None, Some(_)) => problems.push(ConfigProblem::at(
                "collection",
                "needs `database` (without both, the whole server is watched)",
            )),
            (_, Some(c)) if bad_collection(c) => {
                problems.push(ConfigProblem::at("collection", COLLECTION_NAME))
            }
            _ => {}
        }
        if self.batch_size == 0 {
            problems.push(ConfigProblem::at("batch_size", "must be at least 1"));
        }
        problems
    }

    fn describe(&self) -> String {
        format!(
            "mongodb change stream on {} at {} (snapshot: {})",
            self.scope(),
            self.redacted_uri(),
            match self.snapshot {
                SnapshotMode::Initial => "initial",
                SnapshotMode::Never => "never",
            }
        )
    }

    /// Changes are exactly-once by resume token; the snapshot is read
    /// while writes go on, so a document changed during it shows in it (in
    /// its state at the moment it was read) and again as the change.
    fn delivery_caveat(&self) -> Option<&'static str> {
        match self.snapshot {
            SnapshotMode::Initial => Some(
                "a document changed while the initial snapshot is read arrives in the snapshot \
                 and again as that change event",
            ),
            SnapshotMode::Never => None,
        }
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(crate::source::ChangeStreamSource::new(
            self.clone(),
        )))
    }

    async fn backlog(
        &self,
        _ctx: &BuildContext,
    ) -> Result<Option<Box<dyn ferry_api::Backlog>>, ConnectorError> {
        Ok(Some(Box::new(crate::source::Behind(
            crate::source::ChangeStreamSource::new(self.clone()),
        ))))
    }

    /// A resume token as the committed positions hold it (`{"token": …,
    /// "time": …}`), checked by resuming a change stream from it.
    async fn resume_point(
        &self,
        _: &BuildContext,
        partition: &str,
        offset: &ferry_api::Value,
        _: Option<&ferry_api::Position>,
    ) -> Result<ferry_api::Position, ConnectorError> {
        let mut probe = crate::source::ChangeStreamSource::new(self.clone());
        probe.resume_point(partition, offset).await
    }

    async fn check(&self, _ctx: &BuildContext) -> Result<(), ConnectorError> {
        let shown = self.redacted_uri();
        let client = crate::client::connect(&self.uri, &shown).await?;
        crate::client::ping(&client, &shown).await
    }
}
