//! `sink: {type: elasticsearch}`: parsed and validated without I/O.

use std::time::Duration;

use async_trait::async_trait;
use ferry_api::{BuildContext, ConfigProblem, ConnectorError, Delivery, Sink, SinkConfig};
use ferry_connector_kit::{IdName, IdSpec, redact_url};
use serde::Deserialize;

use crate::index::IndexTemplate;

/// The bulk action each record becomes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `index`: create or overwrite the document with that `_id`.
    #[default]
    Index,
    /// `create`: only if no document has that `_id` (409 otherwise).
    Create,
    /// `update` with `doc_as_upsert`: merge the record into the document.
    Update,
}

/// `5MB`, `512KB`, `1000000` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteSize(pub usize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, schemars::JsonSchema)]
        #[schemars(inline)]
        #[serde(
            untagged,
            expecting = "expected a size: a number of bytes, or e.g. 5MB, 512KB"
        )]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!("`{s}` is not a size (e.g. 5MB, 512KB, 1000000)"))
            }),
        }
    }
}

impl schemars::JsonSchema for ByteSize {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // What `parse_size` reads.
        schemars::json_schema!({
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*([bBkKmMgG]|[kKmMgG][iI]?[bB])?\\s*$"},
            ],
            "examples": ["5MB"],
        })
    }
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n.parse().ok()?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// How records are grouped into `_bulk` requests.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct BulkConfig {
    /// Actions per request.
    #[serde(default = "default_max_actions")]
    pub max_actions: usize,
    /// Bytes of request body per request (a single larger document is
    /// sent alone).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Longest a record waits before its batch is sent: the pipeline's
    /// `delivery.flush_interval` for this sink, when shorter.
    #[serde(default, with = "ferry_api::duration::option")]
    #[schemars(with = "Option<ferry_api::duration::Text>")]
    pub flush_interval: Option<Duration>,
}

fn default_max_actions() -> usize {
    1000
}

fn default_max_bytes() -> ByteSize {
    ByteSize(5 << 20)
}

impl Default for BulkConfig {
    fn default() -> Self {
        BulkConfig {
            max_actions: default_max_actions(),
            max_bytes: default_max_bytes(),
            flush_interval: None,
        }
    }
}

/// Retries of a request the cluster answered with 429 or 5xx, or could not
/// be reached for: exponential backoff with full jitter. After the last one
/// the pipeline stops writing, reports it, and the runtime starts it again
/// from its committed positions after its own backoff.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries of one request before the sink gives up (the pipeline then
    /// restarts from its committed positions).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The first wait; doubles each retry, with full jitter.
    #[serde(default = "default_initial_backoff", with = "ferry_api::duration")]
    #[schemars(with = "ferry_api::duration::Text")]
    pub initial_backoff: Duration,
    /// The longest wait between two retries.
    #[serde(default = "default_max_backoff", with = "ferry_api::duration")]
    #[schemars(with = "ferry_api::duration::Text")]
    pub max_backoff: Duration,
}

fn default_max_retries() -> u32 {
    8
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(10)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: default_max_retries(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

/// `{username, password}` or `{api_key}` (the base64 `id:key` Elasticsearch
/// hands out, or `{id, key}`); secrets through `${ENV}`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Basic authentication's user, with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic authentication's password (write `${ES_PASSWORD}`).
    #[serde(default)]
    pub password: Option<String>,
    /// An API key instead of a user: the encoded `id:key` Elasticsearch
    /// hands out (write `${ES_API_KEY}`).
    #[serde(default)]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// A PEM file with the CA that signed the cluster's certificate.
    pub ca_file: std::path::PathBuf,
}

/// `sink: {type: elasticsearch}`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSinkConfig {
    /// One or more nodes, tried in turn.
    pub urls: Vec<String>,
    /// A name, or a template: `orders-{yyyy.MM.dd}` (the record's
    /// timestamp, UTC; now when it has none), `events-{tenant}` (a field).
    pub index: String,
    #[serde(default)]
    pub id: IdSpec,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub bulk: BulkConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub auth: Option<Auth>,
    /// TLS settings for `https://` URLs; absent: the system's CA store.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Per request.
    #[serde(default = "default_timeout", with = "ferry_api::duration")]
    #[schemars(with = "ferry_api::duration::Text")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

impl ElasticsearchSinkConfig {
    pub(crate) fn shown_urls(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[async_trait]
impl SinkConfig for ElasticsearchSinkConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.urls.is_empty() {
            problems.push(ConfigProblem::at("urls", "needs at least one node URL"));
        }
        for (i, u) in self.urls.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                problems.push(ConfigProblem {
                    path: vec![
                        ferry_api::PathSegment::Key("urls".into()),
                        ferry_api::PathSegment::Index(i),
                    ],
                    message: format!("`{}` is not an http:// or https:// URL", redact_url(u)),
                });
            }
        }
        if let Err(e) = IndexTemplate::parse(&self.index) {
            problems.push(ConfigProblem::at("index", e));
        }
        match (&self.id, self.action) {
            (IdSpec::Field { field }, _) if field.is_empty() => {
                problems.push(ConfigProblem::at("id", "field must not be empty"))
            }
            (IdSpec::Named(IdName::None), Action::Update) => problems.push(ConfigProblem::at(
                "id",
                "none cannot be used with action: update (an update finds its document by _id)",
            )),
            _ => {}
        }
        if self.bulk.max_actions == 0 {
            problems.push(ConfigProblem::at("bulk", "max_actions must be at least 1"));
        }
        if self.bulk.max_bytes.0 < 1024 {
            problems.push(ConfigProblem::at("bulk", "max_bytes must be at least 1KB"));
        }
        if self.bulk.flush_interval.is_some_and(|d| d.is_zero()) {
            problems.push(ConfigProblem::at(
                "bulk",
                "flush_interval must be more than 0",
            ));
        }
        if self.timeout.is_zero() {
            problems.push(ConfigProblem::at("timeout", "must be more than 0"));
        }
        if self.retry.max_retries > 1000 {
            problems.push(ConfigProblem::at(
                "retry",
                "max_retries must be at most 1000",
            ));
        }
        if self.retry.initial_backoff.is_zero() {
            problems.push(ConfigProblem::at(
                "retry",
                "initial_backoff must be more than 0",
            ));
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            problems.push(ConfigProblem::at(
                "retry",
                "initial_backoff must not exceed max_backoff",
            ));
        }
        if let Some(auth) = &self.auth {
            match (&auth.username, &auth.password, &auth.api_key) {
                (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                _ => problems.push(ConfigProblem::at(
                    "auth",
                    "give either username and password, or api_key",
                )),
            }
        }
        problems
    }

    /// A routed record goes to the index its route names.
    fn takes_destinations(&self) -> bool {
        true
    }

    fn destination_problem(&self, name: &str) -> Option<String> {
        crate::index::invalid_name(name).map(|why| format!("index name `{name}` {why}"))
    }

    fn describe(&self) -> String {
        format!("elasticsearch {} index {}", self.shown_urls(), self.index)
    }

    /// Ids derived from the record or its position make a replay overwrite
    /// the same documents; server ids make it add new ones.
    fn delivery(&self) -> Delivery {
        match self.id {
            IdSpec::Named(IdName::None) => Delivery::AtLeastOnce,
            _ => Delivery::Idempotent,
        }
    }

    fn flush_interval(&self) -> Option<Duration> {
        self.bulk.flush_interval
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(crate::sink::ElasticsearchSink::new(
            self.clone(),
            ctx.stopping.clone(),
            ctx.retries.clone(),
        )?))
    }

    async fn check(&self, _ctx: &BuildContext) -> Result<(), ConnectorError> {
        crate::sink::check(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5MB"), Some(5 << 20));
        assert_eq!(parse_size("512 KB"), Some(512 << 10));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("5 parsecs"), None);
    }
}
