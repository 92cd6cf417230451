use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The payload type of records: any JSON value (an object for most formats).
pub type Value = serde_json::Value;

/// A unit of a source that has its own sequence of offsets: one file, one
/// topic-partition, one table. Shared between the records of that partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Stable identity of the partition; positions are keyed by it.
    pub key: String,
    /// What the source wants to remember about the partition beside the key
    /// (for files: the path and a fingerprint). Opaque to the runtime.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub info: Value,
}

/// Where a record sits in its source. `offset` is the point to resume *after*
/// the record; it is opaque to the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub partition: Arc<Partition>,
    pub offset: Value,
}

impl Position {
    /// A short human form, e.g. `/data/in/a.jsonl@1024`, for logs and errors.
    pub fn describe(&self) -> String {
        let name = match self.partition.info.get("path").and_then(Value::as_str) {
            Some(path) => path,
            None => &self.partition.key,
        };
        format!("{name}@{}", self.offset)
    }

    /// A stable id for the record at this position, `<partition
    /// key>@<offset>`: a replay of the record has the same one, so a sink
    /// that writes with it overwrites instead of duplicating.
    pub fn id(&self) -> String {
        format!("{}@{}", self.partition.key, self.offset)
    }
}

/// The latest position of every partition: what a pipeline has committed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Positions(BTreeMap<String, Position>);

impl Positions {
    pub fn new() -> Self {
        Self::default()
    }

    /// The committed position of a partition, by its key.
    pub fn get(&self, partition_key: &str) -> Option<&Position> {
        self.0.get(partition_key)
    }

    /// Moves a partition's position to `position` (records are acknowledged
    /// in order, so the newest position is the furthest).
    pub fn advance(&mut self, position: &Position) {
        match self.0.get_mut(&position.partition.key) {
            Some(p) => p.clone_from(position),
            None => {
                self.0
                    .insert(position.partition.key.clone(), position.clone());
            }
        }
    }

    /// Advances over positions in source order. Consecutive positions of one
    /// partition cost one update, not one each: the hot path of the engine.
    pub fn advance_all<'a>(&mut self, positions: impl IntoIterator<Item = &'a Position>) {
        let mut run: Option<&Position> = None;
        for p in positions {
            if let Some(last) = run
                && !Arc::ptr_eq(&last.partition, &p.partition)
                && last.partition.key != p.partition.key
            {
                self.advance(last);
            }
            run = Some(p);
        }
        if let Some(last) = run {
            self.advance(last);
        }
    }

    /// Drops a partition (e.g. a file that no longer exists).
    pub fn remove(&mut self, partition_key: &str) -> Option<Position> {
        self.0.remove(partition_key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Position> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One record on its way from a source to a sink.
#[derive(Debug, Clone)]
pub struct Record {
    pub value: Value,
    pub key: Option<Value>,
    /// Milliseconds since the Unix epoch, when the source knows one.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub position: Position,
}

impl Record {
    pub fn new(value: Value, position: Position) -> Self {
        Record {
            value,
            key: None,
            timestamp_ms: None,
            headers: Vec::new(),
            position,
        }
    }
}

/// Input that could not be turned into a record, kept with its position so
/// the runtime can dead-letter it (or stop) and still commit past it.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// The raw input, as text (lossy for binary input, cut to a sane length).
    pub raw: String,
    pub error: String,
    pub position: Position,
}

/// What a source produces: a record, or input that failed to parse.
#[derive(Debug, Clone)]
pub enum SourceItem {
    Record(Record),
    Invalid(Invalid),
}

impl SourceItem {
    pub fn position(&self) -> &Position {
        match self {
            SourceItem::Record(r) => &r.position,
            SourceItem::Invalid(i) => &i.position,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: &Arc<Partition>, offset: u64) -> Position {
        Position {
            partition: partition.clone(),
            offset: offset.into(),
        }
    }

    #[test]
    fn advance_all_keeps_the_last_position_of_each_partition() {
        let a = Arc::new(Partition {
            key: "a".into(),
            info: Value::Null,
        });
        let b = Arc::new(Partition {
            key: "b".into(),
            info: Value::Null,
        });
        let a_again = Arc::new(Partition {
            key: "a".into(),
            info: Value::Null,
        });
        let seq = [
            at(&a, 1),
            at(&a, 2),
            at(&b, 10),
            at(&a_again, 3),
            at(&b, 11),
        ];
        let mut p = Positions::new();
        p.advance_all(&seq);
        assert_eq!(p.get("a").unwrap().offset, Value::from(3));
        assert_eq!(p.get("b").unwrap().offset, Value::from(11));
        assert_eq!(p.len(), 2);
    }
}
