//! # ferry-connector-generate — records from a template
//!
//! **Source** (`type: generate`): produces `count` records (or endlessly)
//! from a JSON template, at a given `rate` or as fast as the sink takes them.
//! In the template, a string that is exactly `"{{seq}}"` becomes the record's
//! sequence number (a JSON number); `{{seq}}` inside a longer string is
//! replaced by its digits. Nothing else varies, so a replayed record is the
//! same record.
//!
//! The position is the next sequence number to produce: after a crash the
//! source resumes exactly after the last committed record, so with any
//! transactional or idempotent sink every sequence number arrives once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_api::{
    BuildContext, ConfigProblem, ConnectorError, Partition, Position, Positions, Record, Source,
    SourceConfig, SourceContext, SourceItem, SourcePlugin, Value, deserialize, schema_of,
};
use serde::Deserialize;

/// `type: generate`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// How many records in all; absent: endless.
    #[serde(default)]
    pub count: Option<u64>,
    /// Records per second; absent: as fast as the sink takes them.
    #[serde(default)]
    pub rate: Option<f64>,
    /// The first sequence number.
    #[serde(default)]
    pub start: u64,
    /// The record, with `{{seq}}` where the sequence number goes.
    #[serde(default = "default_template")]
    pub template: Value,
}

fn default_template() -> Value {
    serde_json::json!({ "num": "{{seq}}" })
}

const SEQ: &str = "{{seq}}";

/// The partition key of every generated record's position.
const PARTITION: &str = "generate";

/// The template with `seq` put in.
fn fill(template: &Value, seq: u64) -> Value {
    match template {
        Value::String(s) if s == SEQ => Value::from(seq),
        Value::String(s) if s.contains(SEQ) => Value::String(s.replace(SEQ, &seq.to_string())),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, seq)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), fill(v, seq))).collect())
        }
        other => other.clone(),
    }
}

#[async_trait]
impl SourceConfig for GenerateConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate <= 1e9)
        {
            problems.push(ConfigProblem::at(
                "rate",
                "must be a positive number of records per second, at most 1000000000",
            ));
        }
        problems
    }

    fn describe(&self) -> String {
        let count = self
            .count
            .map_or("endless".to_string(), |c| format!("{c} records"));
        let rate = self
            .rate
            .map_or("as fast as possible".to_string(), |r| format!("{r}/s"));
        format!("generate {count}, {rate}, from {}", self.template)
    }

    /// With a `count`: the records not yet committed.
    async fn backlog(
        &self,
        _: &BuildContext,
    ) -> Result<Option<Box<dyn ferry_api::Backlog>>, ConnectorError> {
        Ok(self.count.map(|count| {
            let end = self.start.saturating_add(count);
            Box::new(Remaining {
                start: self.start,
                end,
            }) as Box<dyn ferry_api::Backlog>
        }))
    }

    /// The next sequence number to produce, from `start` to the last one
    /// plus one.
    async fn resume_point(
        &self,
        _: &BuildContext,
        partition: &str,
        offset: &Value,
        _: Option<&Position>,
    ) -> Result<Position, ConnectorError> {
        if partition != PARTITION {
            return Err(ConnectorError::Fatal(format!(
                "a generator has one partition, {PARTITION:?}"
            )));
        }
        let end = self.count.map(|c| self.start.saturating_add(c));
        match offset.as_u64() {
            Some(next) if next >= self.start && end.is_none_or(|end| next <= end) => Ok(Position {
                partition: Arc::new(Partition::new(PARTITION)),
                offset: Value::from(next),
            }),
            _ => Err(ConnectorError::Fatal(format!(
                "the offset is the next sequence number to produce: a whole number from {}{}",
                self.start,
                end.map_or(String::new(), |end| format!(" to {end}"))
            ))),
        }
    }

    async fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(Box::new(GenerateSource {
            config: self.clone(),
            partition: Arc::new(Partition::new(PARTITION)),
            next: self.start,
            opened: Instant::now(),
            first: self.start,
        }))
    }
}

/// The generator's lag: the sequence numbers not yet committed.
struct Remaining {
    start: u64,
    end: u64,
}

#[async_trait]
impl ferry_api::Backlog for Remaining {
    async fn measure(
        &mut self,
        committed: &Positions,
    ) -> Result<Vec<ferry_api::Lag>, ConnectorError> {
        let next = committed
            .get(PARTITION)
            .and_then(|p| p.offset.as_u64())
            .unwrap_or(self.start);
        Ok(vec![ferry_api::Lag {
            partition: PARTITION.to_string(),
            label: PARTITION.to_string(),
            amount: self.end.saturating_sub(next) as f64,
            unit: "records",
            estimate: false,
        }])
    }
}

struct GenerateSource {
    config: GenerateConfig,
    partition: Arc<Partition>,
    /// The next sequence number to produce.
    next: u64,
    /// Where this life started, and when: the rate is kept from there.
    first: u64,
    opened: Instant,
}

impl GenerateSource {
    fn end(&self) -> u64 {
        self.config
            .count
            .map_or(u64::MAX, |c| self.config.start.saturating_add(c))
    }
}

#[async_trait]
impl Source for GenerateSource {
    async fn open(
        &mut self,
        committed: &Positions,
        _: &SourceContext,
    ) -> Result<(), ConnectorError> {
        if let Some(p) = committed.get(PARTITION) {
            self.next = p.offset.as_u64().ok_or_else(|| {
                ConnectorError::Fatal(format!(
                    "committed position {} is not a sequence number",
                    p.offset
                ))
            })?;
        }
        self.first = self.next;
        self.opened = Instant::now();
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let end = self.end();
        if self.next >= end {
            // Done: an idle source, so `--once` stops and a daemon waits.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(Vec::new());
        }
        let mut n = (end - self.next).min(max as u64);
        if let Some(rate) = self.config.rate {
            // As many as are due by now since this life started.
            let due = (self.opened.elapsed().as_secs_f64() * rate) as u64;
            let allowed = self.first.saturating_add(due).saturating_sub(self.next);
            if allowed == 0 {
                let wait = Duration::from_secs_f64((1.0 / rate).min(0.2));
                tokio::time::sleep(wait).await;
                return Ok(Vec::new());
            }
            n = n.min(allowed);
        }
        let items = (self.next..self.next + n)
            .map(|seq| {
                SourceItem::Record(Record::new(
                    fill(&self.config.template, seq),
                    Position {
                        partition: self.partition.clone(),
                        offset: Value::from(seq + 1),
                    },
                ))
            })
            .collect();
        self.next += n;
        Ok(items)
    }

    /// Idle only once every record was produced: with a `rate`, an empty
    /// poll just means the next record is not due yet, and `--once` must
    /// not stop there.
    fn idle(&self) -> bool {
        self.next >= self.end()
    }
}

/// The `generate` source, for the runtime's registry.
pub fn source_plugin() -> SourcePlugin {
    SourcePlugin {
        kind: "generate",
        parse: |v| Ok(Box::new(deserialize::<GenerateConfig>(v)?)),
        schema: schema_of::<GenerateConfig>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_takes_the_sequence_number() {
        let t = json!({"num": "{{seq}}", "id": "order-{{seq}}", "tags": ["{{seq}}", 1], "k": true});
        assert_eq!(
            fill(&t, 42),
            json!({"num": 42, "id": "order-42", "tags": [42, 1], "k": true})
        );
    }
}
