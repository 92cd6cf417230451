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
    /// How people know the partition (a file's path, a table's name), for
    /// logs and errors; the key stands in when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What the source wants to remember about the partition beside the key
    /// (for files: the path and a fingerprint). Opaque to the runtime.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub info: Value,
}

impl Partition {
    /// A partition known by its key alone, with nothing else remembered.
    pub fn new(key: impl Into<String>) -> Self {
        Partition {
            key: key.into(),
            label: None,
            info: Value::Null,
        }
    }

    /// The same partition, shown to people as `label`.
    pub fn labelled(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The same partition, remembering `info` beside its key.
    pub fn with_info(mut self, info: Value) -> Self {
        self.info = info;
        self
    }

    /// How people know the partition: its label, else its key.
    pub fn label(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.key)
    }
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
        format!("{}@{}", self.partition.label(), self.offset)
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

/// A record's value: a JSON value that a source may hand over as the JSON
/// text it read, checked but not yet parsed.
///
/// Building a [`Value`] costs allocations for every field, and a sink that
/// writes JSON text (a JSON-lines file, a Kafka topic, an Elasticsearch bulk
/// body) would only turn it back into the same text. So a source reading
/// JSON text (a Kafka message) keeps the text ([`Payload::json`]); a sink
/// that writes JSON writes it as it came ([`Payload::json_text`]), and any
/// other use parses it once, on first access, through `Deref` — on the sink's
/// side of the pipeline, not on the source's.
#[derive(Clone)]
pub struct Payload(Inner);

#[derive(Clone)]
enum Inner {
    Value(Value),
    /// One line of JSON text, exactly as read, checked to be JSON; parsed on
    /// first access.
    Text {
        text: Box<str>,
        parsed: std::sync::OnceLock<Value>,
    },
}

impl Payload {
    /// A payload from JSON text, checked to be exactly one JSON value (and
    /// not parsed). Text spanning several lines (pretty-printed JSON) is
    /// parsed at once instead, so that [`Payload::json_text`] is always one
    /// line, fit for a JSON-lines file.
    pub fn json(text: &str) -> Result<Payload, serde_json::Error> {
        Payload::from_json(text.to_string()).map_err(|(e, _)| e)
    }

    /// [`Payload::json`] of text the caller owns; when it is not JSON, the
    /// text comes back beside the error.
    pub fn from_json(text: String) -> Result<Payload, (serde_json::Error, String)> {
        // A newline in JSON text can only be whitespace (inside strings it
        // is escaped).
        if text.as_bytes().contains(&b'\n') {
            return match serde_json::from_str::<Value>(&text) {
                Ok(value) => Ok(Payload::from(value)),
                Err(e) => Err((e, text)),
            };
        }
        if let Err(e) = serde_json::from_str::<Checked>(&text) {
            return Err((e, text));
        }
        Ok(Payload(Inner::Text {
            text: text.into_boxed_str(),
            parsed: std::sync::OnceLock::new(),
        }))
    }

    /// The value as one line of JSON text as the source read it, when it
    /// was handed over that way and has not been changed since.
    pub fn json_text(&self) -> Option<&str> {
        match &self.0 {
            Inner::Text { text, .. } => Some(text),
            Inner::Value(_) => None,
        }
    }

    /// Writes the value as one line of JSON text (no newline at the end):
    /// the source's text when there is one, else the value serialized.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Inner::Text { text, .. } => out.extend_from_slice(text.as_bytes()),
            Inner::Value(value) => {
                serde_json::to_writer(out, value).expect("a JSON value always serializes")
            }
        }
    }

    /// The value, parsed from the text if it was not yet.
    pub fn into_value(self) -> Value {
        match self.0 {
            Inner::Value(value) => value,
            Inner::Text { text, parsed } => parsed.into_inner().unwrap_or_else(|| parse(&text)),
        }
    }
}

fn parse(checked: &str) -> Value {
    serde_json::from_str(checked).expect("checked by `Checked` to parse into a Value")
}

/// Checks JSON text exactly as parsing it into a [`Value`] would, without
/// building one: serde_json's `IgnoredAny` only skims (it accepts a lone
/// UTF-16 surrogate escape and nesting past the recursion limit, which a
/// later parse then refuses), so [`Payload::from_json`] uses this visitor,
/// which goes through `deserialize_any` like `Value` does: strings are
/// unescaped (into serde_json's scratch buffer, not allocated), and the
/// recursion limit applies. Numbers are exact text (arbitrary precision), so
/// no number is out of range.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        // serde_json hands a number over as a one-entry map under its
        // private token key, and `Value` takes an object whose first key is
        // that token for a number: refuse that key in JSON text, as a
        // `Value` parse would (unless it holds a number: still a Value).
        let mut first = true;
        while let Some(key) = map.next_key::<Key>()? {
            if first && key.0 {
                let number: String = map.next_value()?;
                if number.parse::<serde_json::Number>().is_err() || map.next_key::<Key>()?.is_some()
                {
                    return Err(serde::de::Error::custom("invalid number"));
                }
                return Ok(Checked);
            } else {
                map.next_value::<Checked>()?;
            }
            first = false;
        }
        Ok(Checked)
    }
}

/// A map key: whether it is serde_json's number token.
struct Key(bool);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, k: &str) -> Result<Key, E> {
                Ok(Key(k == NUMBER_TOKEN))
            }
        }
        d.deserialize_str(V)
    }
}

/// The key under which serde_json (with `arbitrary_precision`) carries a
/// number through a map.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl From<Value> for Payload {
    fn from(value: Value) -> Payload {
        Payload(Inner::Value(value))
    }
}

impl std::ops::Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        match &self.0 {
            Inner::Value(value) => value,
            Inner::Text { text, parsed } => parsed.get_or_init(|| parse(text)),
        }
    }
}

impl std::ops::DerefMut for Payload {
    /// A changed value no longer matches the source's text, which is dropped.
    fn deref_mut(&mut self) -> &mut Value {
        if let Inner::Text { text, parsed } = &mut self.0 {
            let value = parsed.take().unwrap_or_else(|| parse(text));
            self.0 = Inner::Value(value);
        }
        match &mut self.0 {
            Inner::Value(value) => value,
            Inner::Text { .. } => unreachable!("replaced above"),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Value(value) => value.fmt(f),
            Inner::Text { text, .. } => write!(f, "json:{text}"),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

/// One record on its way from a source to a sink.
#[derive(Debug, Clone)]
pub struct Record {
    pub value: Payload,
    pub key: Option<Value>,
    /// Milliseconds since the Unix epoch, when the source knows one.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub position: Position,
    /// Where a `route` transform sent the record: the table, collection,
    /// topic or index it goes to, instead of the one the sink's settings
    /// name. `None`: where the sink's settings say. Only sinks that take
    /// destinations ([`crate::SinkConfig::takes_destinations`]) see one.
    pub destination: Option<String>,
}

impl Record {
    pub fn new(value: impl Into<Payload>, position: Position) -> Self {
        Record {
            value: value.into(),
            key: None,
            timestamp_ms: None,
            headers: Vec::new(),
            position,
            destination: None,
        }
    }
}

/// Input that could not be turned into a record, kept with its position so
/// the runtime can dead-letter it (or stop) and still commit past it.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// The input as it came (as far as the source kept it: an over-long
    /// line only its start), so that a dead letter can be replayed.
    pub raw: Raw,
    pub error: String,
    pub position: Position,
}

/// Input that failed to parse, as it came.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// Valid UTF-8.
    Text(String),
    /// Anything else: the bytes as they were (a dead letter holds them in
    /// base64, under a key that says so).
    Bytes(Vec<u8>),
}

impl Raw {
    /// Text when `bytes` are UTF-8, else the bytes themselves.
    pub fn of(bytes: &[u8]) -> Raw {
        match std::str::from_utf8(bytes) {
            Ok(text) => Raw::Text(text.to_string()),
            Err(_) => Raw::Bytes(bytes.to_vec()),
        }
    }
}

impl From<String> for Raw {
    fn from(text: String) -> Raw {
        Raw::Text(text)
    }
}

impl std::fmt::Display for Raw {
    /// Text as it is; bytes lossily, for messages only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Raw::Text(t) => f.write_str(t),
            Raw::Bytes(b) => f.write_str(&String::from_utf8_lossy(b)),
        }
    }
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
    fn json_text_is_kept_as_read_and_parsed_on_first_look() {
        let p = Payload::json(r#"{"b": 1,  "a":[true, null]}"#).unwrap();
        // Written as it came (spacing, order), without building a value.
        assert_eq!(p.json_text(), Some(r#"{"b": 1,  "a":[true, null]}"#));
        let mut out = Vec::new();
        p.write_json(&mut out);
        assert_eq!(out, br#"{"b": 1,  "a":[true, null]}"#);
        // Any other use sees the value.
        assert_eq!(p["b"], 1);
        assert_eq!(*p, serde_json::json!({"b": 1, "a": [true, null]}));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"b":1,"a":[true,null]}"#
        );
        assert_eq!(p.clone().into_value()["a"][0], true);
    }

    #[test]
    fn json_that_is_not_one_value_comes_back_with_its_text() {
        for bad in ["{\"a\": ", "{} {}", "", "nul", "{\"a\":1}x"] {
            let (e, text) = Payload::from_json(bad.to_string()).unwrap_err();
            assert_eq!(text, bad);
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn what_passes_the_check_always_parses() {
        // Each of these once passed the check and then panicked on first use.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [
            r#"{"a":"\ud800"}"#,
            r#"["\udc00x"]"#,
            deep.as_str(),
            r#"{"$serde_json::private::Number":"x"}"#,
            r#"{"$serde_json::private::Number":1}"#,
            r#"{"$serde_json::private::Number":"1","b":2}"#,
        ] {
            assert!(Payload::json(bad).is_err(), "{bad} must be refused");
        }
        // Numbers are exact text: nothing is out of range or rounded.
        for (text, shown) in [
            (r#"{"a":1e400}"#, "1e+400"),
            (r#"{"a":18446744073709551616}"#, "18446744073709551616"),
            (r#"{"a":1.0e-400}"#, "1.0e-400"),
            (
                r#"{"a":0.1000000000000000055511151231257827}"#,
                "0.1000000000000000055511151231257827",
            ),
        ] {
            let p = Payload::json(text).unwrap();
            assert_eq!(p["a"].to_string(), shown);
        }
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(Payload::json(&ok).unwrap().is_array());
    }

    #[test]
    fn json_on_several_lines_is_parsed_so_its_text_stays_one_line() {
        let p = Payload::json("{\n  \"a\": 1\n}").unwrap();
        assert_eq!(p.json_text(), None);
        let mut out = Vec::new();
        p.write_json(&mut out);
        assert_eq!(out, br#"{"a":1}"#);
    }

    #[test]
    fn a_changed_value_drops_the_source_text() {
        let mut p = Payload::json(r#"{"a":1}"#).unwrap();
        p["a"] = 2.into();
        assert_eq!(p.json_text(), None);
        let mut out = Vec::new();
        p.write_json(&mut out);
        assert_eq!(out, br#"{"a":2}"#);
    }

    #[test]
    fn advance_all_keeps_the_last_position_of_each_partition() {
        let a = Arc::new(Partition::new("a"));
        let b = Arc::new(Partition::new("b"));
        let a_again = Arc::new(Partition::new("a"));
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
