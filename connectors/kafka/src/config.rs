//! The `kafka` source and sink sections: parsed and checked without I/O.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ferry_api::{
    BuildContext, ConfigProblem, ConnectorError, Delivery, Sink, SinkConfig, Source, SourceConfig,
    Value,
};
use rdkafka::ClientConfig;
use serde::Deserialize;

/// librdkafka properties ferry sets itself: letting a user override them
/// would break the delivery guarantee (auto-commit commits before the sink
/// is durable) or duplicate a key of the section.
const OWNED_BY_FERRY: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("group.id", "use `group_id`"),
    (
        "enable.auto.commit",
        "ferry commits offsets itself, only after the sink made the records durable",
    ),
    (
        "enable.auto.offset.store",
        "ferry commits offsets itself, only after the sink made the records durable",
    ),
    ("auto.offset.reset", "use `start`"),
    ("enable.idempotence", "the producer is always idempotent"),
    ("acks", "the producer always waits for all in-sync replicas"),
];

/// The schema of `options:`: what `option_text` takes. The names and the
/// values' meaning are librdkafka's, checked by it at `validate`.
fn options_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]},
    })
}

/// `options:` values may be written as YAML numbers or booleans.
fn option_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn check_brokers_key(brokers: &str, problems: &mut Vec<ConfigProblem>) {
    if brokers.trim().is_empty() {
        problems.push(ConfigProblem::at(
            "brokers",
            "must name at least one broker",
        ));
    }
}

fn check_options(options: &BTreeMap<String, Value>, problems: &mut Vec<ConfigProblem>) {
    for (k, v) in options {
        let path = || {
            vec![
                ferry_api::PathSegment::Key("options".into()),
                ferry_api::PathSegment::Key(k.clone()),
            ]
        };
        if let Some((_, why)) = OWNED_BY_FERRY.iter().find(|(o, _)| o == k) {
            problems.push(ConfigProblem {
                path: path(),
                message: format!("set by ferry: {why}"),
            });
        } else if let Some(text) = option_text(v) {
            // librdkafka checks a setting as it is set, without a client:
            // no I/O, no threads. An unknown name or bad value is found
            // here instead of when the pipeline starts.
            let mut one = ClientConfig::new();
            one.set(k, text);
            if let Err(e) = one.create_native_config() {
                problems.push(ConfigProblem {
                    path: path(),
                    message: format!("librdkafka refuses it: {}", librdkafka_reason(&e)),
                });
            }
        } else {
            problems.push(ConfigProblem {
                path: path(),
                message: "must be a string, number or boolean".into(),
            });
        }
    }
}

/// librdkafka's own words for a refused setting.
fn librdkafka_reason(e: &rdkafka::error::KafkaError) -> String {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, description, _, _) => description.clone(),
        other => other.to_string(),
    }
}

/// How often clients refresh the cluster's metadata unless `options` say
/// otherwise: a topic created (or matching `topic_pattern`) after start, a
/// deleted topic, new partitions are seen within this. librdkafka's default
/// is 5 minutes; a metadata request is small.
const METADATA_REFRESH_MS: &str = "10000";

/// A client config with `brokers` and the pass-through options.
pub(crate) fn client_config(brokers: &str, options: &BTreeMap<String, Value>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c.set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS);
    for (k, v) in options {
        if let Some(text) = option_text(v) {
            c.set(k, text);
        }
    }
    c
}

/// Where a group with no committed offset starts.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    Earliest,
    Latest,
}

/// How a message's payload becomes a record's value.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON document; a message that is not one is an invalid record.
    #[default]
    Json,
    /// UTF-8 text, as a string.
    Text,
    /// Any bytes, as a base64 string.
    Bytes,
}

/// `source: {type: kafka}`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Topics to read; or `topic_pattern`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression (librdkafka's syntax) of the topics to read.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// The consumer group; default `ferry-<pipeline>`.
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub start: Start,
    #[serde(default)]
    pub format: Format,
    /// Any librdkafka consumer property, passed through.
    #[serde(default)]
    #[schemars(schema_with = "options_schema")]
    pub options: BTreeMap<String, Value>,
}

impl KafkaSourceConfig {
    pub(crate) fn subscription(&self) -> Vec<String> {
        match &self.topic_pattern {
            // librdkafka reads a topic starting with `^` as a pattern.
            Some(p) if p.starts_with('^') => vec![p.clone()],
            Some(p) => vec![format!("^{p}")],
            None => self.topics.clone(),
        }
    }

    /// `[a, b]` or `the topics matching p`, for messages.
    pub(crate) fn describe_topics(&self) -> String {
        match &self.topic_pattern {
            Some(p) => format!("the topics matching {p}"),
            None => format!("[{}]", self.topics.join(", ")),
        }
    }

    pub(crate) fn group(&self, pipeline: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("ferry-{pipeline}"))
    }
}

#[async_trait]
impl SourceConfig for KafkaSourceConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        check_brokers_key(&self.brokers, &mut problems);
        match (self.topics.is_empty(), &self.topic_pattern) {
            (true, None) => problems.push(ConfigProblem::at(
                "topics",
                "name the topics to read (or set topic_pattern)",
            )),
            (false, Some(_)) => problems.push(ConfigProblem::at(
                "topic_pattern",
                "set either topics or topic_pattern, not both",
            )),
            _ => {}
        }
        check_options(&self.options, &mut problems);
        problems
    }

    fn describe(&self) -> String {
        let what = match &self.topic_pattern {
            Some(p) => format!("topics matching {p}"),
            None => self.topics.join(", "),
        };
        let format = match self.format {
            Format::Json => "json",
            Format::Text => "text",
            Format::Bytes => "bytes",
        };
        format!("kafka {what} at {} ({format})", self.brokers)
    }

    fn delivery_caveat(&self) -> Option<&'static str> {
        Some(
            "across daemons of one group only when every member's sink keeps its positions where the \
             others read them (file outputs in one directory, one PostgreSQL database)",
        )
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(crate::source::KafkaSource::new(
            self.clone(),
            &ctx.pipeline,
            ctx.retries.clone(),
        )))
    }

    async fn backlog(
        &self,
        ctx: &BuildContext,
    ) -> Result<Option<Box<dyn ferry_api::Backlog>>, ConnectorError> {
        let backlog = crate::backlog::KafkaBacklog::new(self, &ctx.pipeline)?;
        Ok(Some(Box::new(backlog)))
    }

    async fn check(&self, ctx: &BuildContext) -> Result<(), ConnectorError> {
        crate::check_brokers(&self.brokers, &self.options, &ctx.pipeline, &self.topics).await
    }

    /// The next offset to read of `topic/partition`, between the
    /// partition's low and high watermarks.
    async fn resume_point(
        &self,
        ctx: &BuildContext,
        partition: &str,
        offset: &ferry_api::Value,
        committed: Option<&ferry_api::Position>,
    ) -> Result<ferry_api::Position, ConnectorError> {
        let named = partition
            .rsplit_once('/')
            .and_then(|(topic, p)| Some((topic, p.parse::<i32>().ok()?)));
        let Some((topic, id)) = named else {
            return Err(ConnectorError::Fatal(format!(
                "{partition:?} is not a Kafka partition (topic/partition, e.g. orders/0)"
            )));
        };
        if committed.is_none() && !self.topics.iter().any(|t| t == topic) {
            return Err(ConnectorError::Fatal(format!(
                "topic {topic:?} is not one this pipeline reads{}",
                if self.topic_pattern.is_some() {
                    " yet (a topic of the pattern can be given once it has been committed)"
                } else {
                    ""
                }
            )));
        }
        let Some(next) = offset.as_i64().filter(|o| *o >= 0) else {
            return Err(ConnectorError::Fatal(
                "a Kafka offset is the next offset to read, a whole number".to_string(),
            ));
        };
        let backlog = crate::backlog::KafkaBacklog::new(self, &ctx.pipeline)?;
        let (low, high) = backlog.watermarks(topic, id).await?;
        if next < low || next > high {
            return Err(ConnectorError::Fatal(format!(
                "{partition} holds offsets {low} to {high} (the high watermark: what is written next): {next} is outside them"
            )));
        }
        Ok(ferry_api::Position {
            partition: committed.map_or_else(
                || std::sync::Arc::new(crate::source::partition_of(topic, id)),
                |c| c.partition.clone(),
            ),
            offset: ferry_api::Value::from(next),
        })
    }
}

/// The topic a record goes to.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(untagged, expecting = "expected a topic name, or `{field: name}`")]
pub enum TopicSpec {
    /// Always this topic.
    Static(String),
    /// The value of a record field (a string), per record.
    Field {
        /// The record field that names the topic.
        field: String,
    },
}

/// How a record becomes a message's payload.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// The record's value as JSON.
    #[default]
    Json,
    /// A string value as its text (other values as JSON).
    Text,
}

/// `sink: {type: kafka}`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: TopicSpec,
    /// A record field whose value is the message key (strings as text,
    /// other values as JSON); absent: no key.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub format: SinkFormat,
    /// Any librdkafka producer property (batching, compression, …).
    #[serde(default)]
    #[schemars(schema_with = "options_schema")]
    pub options: BTreeMap<String, Value>,
}

#[async_trait]
impl SinkConfig for KafkaSinkConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        check_brokers_key(&self.brokers, &mut problems);
        match &self.topic {
            TopicSpec::Static(t) if t.is_empty() => {
                problems.push(ConfigProblem::at("topic", "must not be empty"))
            }
            TopicSpec::Field { field } if field.is_empty() => {
                problems.push(ConfigProblem::at("topic", "field must not be empty"))
            }
            _ => {}
        }
        check_options(&self.options, &mut problems);
        problems
    }

    /// A routed record goes to the topic its route names.
    fn takes_destinations(&self) -> bool {
        true
    }

    /// Kafka's own rule for topic names.
    fn destination_problem(&self, name: &str) -> Option<String> {
        let legal = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        (!legal || name.len() > 249 || name == "." || name == "..").then(|| {
            format!("topic `{name}`: Kafka topic names are 1 to 249 of a-z A-Z 0-9 . _ - (and not . or ..)")
        })
    }

    fn describe(&self) -> String {
        let topic = match &self.topic {
            TopicSpec::Static(t) => t.clone(),
            TopicSpec::Field { field } => format!("the topic in field `{field}`"),
        };
        format!("kafka {topic} at {}", self.brokers)
    }

    /// An idempotent producer never writes a message twice within one
    /// session, but a replay after a crash sends the records again: no
    /// transactions here (no broker available to test them faithfully).
    fn delivery(&self) -> Delivery {
        Delivery::AtLeastOnce
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(crate::sink::KafkaSink::new(
            self.clone(),
            &ctx.pipeline,
            ctx.retries.clone(),
            ctx.stopping.clone(),
        )))
    }

    /// The brokers only: a missing topic may be created by the broker on
    /// the first write (`auto.create.topics.enable`).
    async fn check(&self, ctx: &BuildContext) -> Result<(), ConnectorError> {
        crate::check_brokers(&self.brokers, &self.options, &ctx.pipeline, &[]).await
    }
}
