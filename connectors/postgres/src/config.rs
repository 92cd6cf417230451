use async_trait::async_trait;
use ferry_api::{
    BuildContext, ConfigProblem, ConnectorError, Delivery, PathSegment, Sink, SinkConfig, Source,
    SourceConfig,
};
use ferry_connector_kit::{Destination, redact_url};
use serde::Deserialize;

use crate::sink::PostgresSink;
use crate::source::PostgresSource;

/// How records land in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plain inserts.
    #[default]
    Insert,
    /// `INSERT … ON CONFLICT (key) DO UPDATE`: the last record of a key wins.
    Upsert,
}

/// `sink: {type: postgres, ...}`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// `postgres://user:password@host:port/database`; use `${PG_URL}` to keep
    /// the password out of the file.
    pub url: String,
    /// `schema.table` or `table` (schema `public`), or `{field: name}` for
    /// a record field that names it; a `route` transform's destination goes
    /// before either. Must exist, unless `create_table`; a record sent to a
    /// table that does not and cannot exist is refused (dead-lettered).
    pub table: Destination,
    /// `insert` (default) or `upsert`.
    #[serde(default)]
    pub mode: Mode,
    /// The conflict target for `upsert`: columns of a unique index.
    #[serde(default)]
    pub key: Vec<String>,
    /// Where the pipeline's source positions are committed, in the same
    /// transaction as the rows. Created when missing.
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
    /// `auto` (default): top-level fields go to same-named columns; or an
    /// explicit `field: column` map (other fields are left out).
    #[serde(default)]
    pub columns: Columns,
    /// Create the table from the first batch's fields when it is missing
    /// (bigint / double precision / boolean / text, jsonb for nested values),
    /// with `key` as its primary key.
    #[serde(default)]
    pub create_table: bool,
}

/// The `postgres` sink of one pipeline as the runtime holds it for the
/// pipeline's whole run: its settings, and what one life of the sink leaves
/// to the next.
#[derive(Debug)]
pub struct PostgresSinkDefinition {
    pub settings: PostgresSinkConfig,
    /// Records the next life writes with a savepoint per chunk: set by a
    /// life whose COPY the database refused a row of (the transaction is
    /// lost, the runtime replays the batch into a new sink), so the replay
    /// isolates the row instead of failing the same way again. In memory:
    /// after a crash the row is found again the same way.
    pub(crate) isolate_next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl From<PostgresSinkConfig> for PostgresSinkDefinition {
    fn from(settings: PostgresSinkConfig) -> Self {
        PostgresSinkDefinition {
            settings,
            isolate_next: Default::default(),
        }
    }
}

/// Which record field goes to which column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ColumnsRepr")]
pub enum Columns {
    #[default]
    Auto,
    /// `(field, column)` pairs.
    Map(Vec<(String, String)>),
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "expected `auto`, or a mapping of record field to column"
)]
enum ColumnsRepr {
    Word(String),
    Map(std::collections::BTreeMap<String, String>),
}

impl schemars::JsonSchema for Columns {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Columns".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // What `try_from` takes.
        schemars::json_schema!({
            "anyOf": [
                {"const": "auto"},
                {"type": "object", "additionalProperties": {"type": "string"}},
            ],
        })
    }
}

impl TryFrom<ColumnsRepr> for Columns {
    type Error = String;

    fn try_from(r: ColumnsRepr) -> Result<Self, String> {
        match r {
            ColumnsRepr::Word(w) if w == "auto" => Ok(Columns::Auto),
            ColumnsRepr::Word(w) => {
                Err(format!("`{w}`: expected `auto` or a map of field: column"))
            }
            ColumnsRepr::Map(m) => Ok(Columns::Map(m.into_iter().collect())),
        }
    }
}

fn default_offsets_table() -> String {
    "public.ferry_offsets".to_string()
}

/// What a table name that is not a plain `table` or `schema.table` gets told.
pub(crate) const TABLE_NAME: &str = "must be `table` or `schema.table` (letters, digits, _)";

/// `schema.table` → (schema, table), both validated as plain identifiers.
pub(crate) fn split_table(name: &str) -> Option<(String, String)> {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    (is_identifier(schema) && is_identifier(table)).then(|| (schema.to_string(), table.to_string()))
}

/// Plain identifiers only: they are quoted into SQL.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

#[async_trait]
impl SinkConfig for PostgresSinkDefinition {
    fn validate(&self) -> Vec<ConfigProblem> {
        self.settings.problems()
    }

    fn describe(&self) -> String {
        self.settings.describe()
    }

    fn delivery(&self) -> Delivery {
        Delivery::Transactional
    }

    /// A routed record goes to the table its route names, in the same
    /// transaction as the others.
    fn takes_destinations(&self) -> bool {
        true
    }

    fn destination_problem(&self, name: &str) -> Option<String> {
        crate::sink::destination_problem(name, &self.settings.offsets_table)
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(PostgresSink::new(
            self.settings.clone(),
            ctx.pipeline.clone(),
            self.isolate_next.clone(),
        )))
    }

    async fn check(&self, ctx: &BuildContext) -> Result<(), ConnectorError> {
        PostgresSink::new(
            self.settings.clone(),
            ctx.pipeline.clone(),
            Default::default(),
        )
        .check()
        .await
    }
}

impl PostgresSinkConfig {
    fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        check_url(&self.url, &mut problems);
        match &self.table {
            Destination::Name(name) if split_table(name).is_none() => {
                problems.push(ConfigProblem::at("table", TABLE_NAME))
            }
            Destination::Field { field } if field.is_empty() => {
                problems.push(ConfigProblem::at("table", "field must not be empty"))
            }
            _ => {}
        }
        if split_table(&self.offsets_table).is_none() {
            problems.push(ConfigProblem::at("offsets_table", TABLE_NAME));
        }
        match self.mode {
            Mode::Upsert if self.key.is_empty() => problems.push(ConfigProblem::at(
                "key",
                "is required with mode: upsert (the conflict target)",
            )),
            Mode::Insert if !self.key.is_empty() => {
                problems.push(ConfigProblem::at("key", "is only used with mode: upsert"))
            }
            _ => {}
        }
        if let Columns::Map(map) = &self.columns {
            if map.is_empty() {
                problems.push(ConfigProblem::at("columns", "maps no field"));
            }
            for (field, column) in map {
                if !is_identifier(column) {
                    problems.push(ConfigProblem {
                        path: vec![
                            PathSegment::Key("columns".into()),
                            PathSegment::Key(field.clone()),
                        ],
                        message: format!("`{column}` is not a plain column name"),
                    });
                }
            }
            for k in &self.key {
                if !map.iter().any(|(_, c)| c == k) {
                    problems.push(ConfigProblem::at(
                        "key",
                        format!("`{k}` is not one of the mapped columns"),
                    ));
                }
            }
        }
        for k in &self.key {
            if !is_identifier(k) {
                problems.push(ConfigProblem::at(
                    "key",
                    format!("`{k}` is not a plain column name"),
                ));
            }
        }
        problems
    }

    fn describe(&self) -> String {
        let mode = match self.mode {
            Mode::Insert => "insert".to_string(),
            Mode::Upsert => format!("upsert on {}", self.key.join(", ")),
        };
        format!(
            "postgres {} table {} ({mode})",
            redact_url(&self.url),
            self.table.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn tables_are_plain_identifiers() {
        assert_eq!(
            split_table("orders"),
            Some(("public".into(), "orders".into()))
        );
        assert_eq!(split_table("s.t_1"), Some(("s".into(), "t_1".into())));
        assert_eq!(split_table("x; drop table y"), None);
    }
}

/// How the source finds new rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
pub enum SourceMode {
    /// New rows have a larger `incrementing_column` (an identity or
    /// sequence): catches inserts.
    #[default]
    #[serde(rename = "incrementing")]
    Incrementing,
    /// Rows are ordered by `(timestamp_column, incrementing_column)`: catches
    /// inserts and updates that move the timestamp forward.
    #[serde(rename = "timestamp+incrementing")]
    TimestampIncrementing,
}

/// `source: {type: postgres, ...}`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:password@host:port/database`; use `${PG_URL}` to keep
    /// the password out of the file.
    pub url: String,
    /// `schema.table` or `table`; or use `query`.
    #[serde(default)]
    pub table: Option<String>,
    /// A `SELECT` whose rows are read instead of a table's; the cursor
    /// columns must be among its output columns.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub mode: SourceMode,
    /// A column that grows with each new row (an identity or a sequence):
    /// the cursor.
    pub incrementing_column: String,
    /// With `mode: timestamp+incrementing`: a column that moves forward when
    /// a row is written, compared before `incrementing_column`.
    #[serde(default)]
    pub timestamp_column: Option<String>,
    /// How long to wait before looking again when there is nothing new.
    #[serde(default = "default_poll_interval", with = "ferry_api::duration")]
    #[schemars(with = "ferry_api::duration::Text")]
    pub poll_interval: std::time::Duration,
    /// Rows per query.
    #[serde(default = "default_source_batch")]
    pub batch_size: usize,
}

fn default_poll_interval() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

fn default_source_batch() -> usize {
    5000
}

impl PostgresSourceConfig {
    /// The cursor columns, in comparison order.
    pub(crate) fn cursor_columns(&self) -> Vec<String> {
        match (self.mode, &self.timestamp_column) {
            (SourceMode::TimestampIncrementing, Some(ts)) => {
                vec![ts.clone(), self.incrementing_column.clone()]
            }
            _ => vec![self.incrementing_column.clone()],
        }
    }

    /// What the rows come from, for messages and the partition key.
    pub(crate) fn origin(&self) -> String {
        match (&self.table, &self.query) {
            (Some(t), _) => t.clone(),
            (None, Some(q)) => format!(
                "query {}",
                q.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            (None, None) => String::new(),
        }
    }
}

fn check_url(url: &str, problems: &mut Vec<ConfigProblem>) {
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        problems.push(ConfigProblem::at(
            "url",
            "must start with postgres:// or postgresql://",
        ));
    }
}

#[async_trait]
impl SourceConfig for PostgresSourceConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        check_url(&self.url, &mut problems);
        match (&self.table, &self.query) {
            (Some(_), Some(_)) => problems.push(ConfigProblem::at(
                "query",
                "give either `table` or `query`, not both",
            )),
            (None, None) => problems.push(ConfigProblem::at(
                "table",
                "is required (or give a `query`)",
            )),
            (Some(t), None) if split_table(t).is_none() => {
                problems.push(ConfigProblem::at("table", TABLE_NAME))
            }
            (None, Some(q)) if !q.trim_start().to_ascii_lowercase().starts_with("select") => {
                problems.push(ConfigProblem::at("query", "must be a SELECT"))
            }
            _ => {}
        }
        if !is_identifier(&self.incrementing_column) {
            problems.push(ConfigProblem::at(
                "incrementing_column",
                "must be a plain column name (letters, digits, _)",
            ));
        }
        match (self.mode, &self.timestamp_column) {
            (SourceMode::TimestampIncrementing, None) => problems.push(ConfigProblem::at(
                "timestamp_column",
                "is required with mode: timestamp+incrementing",
            )),
            (SourceMode::Incrementing, Some(_)) => problems.push(ConfigProblem::at(
                "timestamp_column",
                "is only used with mode: timestamp+incrementing",
            )),
            (_, Some(ts)) if !is_identifier(ts) => problems.push(ConfigProblem::at(
                "timestamp_column",
                "must be a plain column name (letters, digits, _)",
            )),
            _ => {}
        }
        if self.batch_size == 0 {
            problems.push(ConfigProblem::at("batch_size", "must be at least 1"));
        }
        problems
    }

    fn describe(&self) -> String {
        let cursor = self.cursor_columns().join(", ");
        format!(
            "postgres {} {} (cursor {cursor})",
            redact_url(&self.url),
            self.origin()
        )
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(PostgresSource::new(
            self.clone(),
            ctx.pipeline.clone(),
        )))
    }

    async fn backlog(
        &self,
        ctx: &BuildContext,
    ) -> Result<Option<Box<dyn ferry_api::Backlog>>, ConnectorError> {
        let backlog = crate::backlog::PostgresBacklog::new(self.clone(), ctx.pipeline.clone());
        Ok(Some(Box::new(backlog)))
    }

    /// A cursor: the cursor column's value as text (an array of the two
    /// with `timestamp+incrementing`), one the column's type can hold.
    async fn resume_point(
        &self,
        ctx: &BuildContext,
        partition: &str,
        offset: &ferry_api::Value,
        _: Option<&ferry_api::Position>,
    ) -> Result<ferry_api::Position, ConnectorError> {
        let mut backlog = crate::backlog::PostgresBacklog::new(self.clone(), ctx.pipeline.clone());
        backlog.resume_point(partition, offset).await
    }

    async fn check(&self, ctx: &BuildContext) -> Result<(), ConnectorError> {
        let mut source = PostgresSource::new(self.clone(), ctx.pipeline.clone());
        let opened = source
            .open(
                &ferry_api::Positions::new(),
                &ferry_api::SourceContext::detached(),
            )
            .await;
        source.close().await;
        opened
    }
}
