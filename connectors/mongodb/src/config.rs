//! `sink: {type: mongodb}`: parsed and validated without I/O.

use async_trait::async_trait;
use ferry_api::{BuildContext, ConfigProblem, ConnectorError, Delivery, Sink, SinkConfig};
use serde::Deserialize;

/// How documents are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
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

/// Where each document's `_id` comes from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum IdSpec {
    /// `position` (derived from the record's source position, the default)
    /// or `none` (the server chooses: at-least-once).
    Named(IdName),
    /// `{field: name}`: the value of a record field.
    Field { field: String },
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum IdName {
    Position,
    None,
}

impl Default for IdSpec {
    fn default() -> Self {
        IdSpec::Named(IdName::Position)
    }
}

/// `sink: {type: mongodb}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSinkConfig {
    /// A MongoDB connection string (secrets through `${ENV}`).
    pub uri: String,
    pub database: String,
    pub collection: String,
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
        redact(&self.uri)
    }
}

/// `mongodb://user:secret@host/` → `mongodb://user:***@host/`.
fn redact(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end..];
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let creds = &rest[..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &uri[..scheme_end], &rest[at..])
        }
        None => uri.to_string(),
    }
}

#[async_trait]
impl SinkConfig for MongoSinkConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            problems.push(ConfigProblem::at(
                "uri",
                "must be a MongoDB connection string (mongodb://… or mongodb+srv://…)",
            ));
        }
        // Names MongoDB refuses, caught before anything connects.
        if self.database.is_empty() || self.database.contains(['/', '\\', '.', ' ', '"', '$']) {
            problems.push(ConfigProblem::at(
                "database",
                "must be a non-empty name without / \\ . space \" $",
            ));
        }
        if self.collection.is_empty()
            || self.collection.contains('$')
            || self.collection.starts_with("system.")
        {
            problems.push(ConfigProblem::at(
                "collection",
                "must be a non-empty name without $, not in system.*",
            ));
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
            self.collection,
            self.redacted_uri()
        )
    }

    /// Ids derived from the record or its position make a replay overwrite
    /// what it wrote before; server-chosen ids make it write again.
    fn delivery(&self) -> Delivery {
        match self.id {
            IdSpec::Named(IdName::None) => Delivery::AtLeastOnce,
            _ => Delivery::Idempotent,
        }
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(crate::sink::MongoSink::new(self.clone())))
    }

    async fn check(&self, _ctx: &BuildContext) -> Result<(), ConnectorError> {
        let client = crate::sink::connect(self).await?;
        crate::sink::ping(&client, self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("mongodb://app:s3cret@db.example:27017/?tls=true"),
            "mongodb://app:***@db.example:27017/?tls=true"
        );
        assert_eq!(
            redact("mongodb://127.0.0.1:27217/?directConnection=true"),
            "mongodb://127.0.0.1:27217/?directConnection=true"
        );
    }
}
