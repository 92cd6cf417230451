//! The MongoDB sink: each write is a few unordered `insert` / `update`
//! commands with journaled write concern, so a write that returned is
//! durable and `commit` has nothing left to do.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_api::{ConnectorError, Positions, Record, Rejected, Sink, Value};
use ferry_connector_kit::{IdName, IdSpec};
use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};

use crate::client::{classify, connect, ping};
use crate::config::{COLLECTION_NAME, MongoSinkConfig, WriteMode, bad_collection};

/// Documents per command: well under the server's 100,000, and small
/// enough that a command stays far below the 48 MB message limit for
/// documents of ordinary size.
const PER_COMMAND: usize = 1000;

/// The duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

pub(crate) struct MongoSink {
    config: Arc<MongoSinkConfig>,
    pipeline: String,
    db: Option<Database>,
}

/// Pipelines told that their records' own `_id` is replaced: once per run
/// of ferry, not once per restart of the sink.
static TOLD_OWN_ID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl MongoSink {
    pub(crate) fn new(config: MongoSinkConfig, pipeline: &str) -> Self {
        MongoSink {
            config: Arc::new(config),
            pipeline: pipeline.to_string(),
            db: None,
        }
    }

    /// Whether this pipeline is yet to be told (and now counts as told).
    fn first_to_tell(&self) -> bool {
        let mut told = TOLD_OWN_ID.lock().unwrap_or_else(|e| e.into_inner());
        if told.contains(&self.pipeline) {
            return false;
        }
        told.push(self.pipeline.clone());
        true
    }

    /// The collection `r` goes to, checked as the server would.
    fn collection_of<'r>(&'r self, r: &'r Record) -> Result<Cow<'r, str>, String> {
        let name = self.config.collection.of(r)?;
        if bad_collection(&name) {
            return Err(format!("collection {name:?} {COLLECTION_NAME}"));
        }
        if self.config.database.len() + 1 + name.len() > 255 {
            return Err(format!(
                "collection {name:?}: with its database, a name of more than MongoDB's 255 bytes"
            ));
        }
        Ok(name)
    }

    /// The document for a record, with its `_id` (none for `id: none`).
    fn document(&self, r: &Record) -> Result<(Option<Bson>, Document), String> {
        // Parsed here, on the sink's side, when the source handed over
        // JSON text; not kept, as only the document is needed.
        let value = r.value.clone().into_value();
        if !value.is_object() {
            return Err("not a JSON object: a MongoDB document must be one".into());
        }
        // What BSON cannot hold as it is refuses this record, not the whole
        // command (a NUL in a name failed every command it was in, for
        // good) and is never stored changed (a number rounded).
        unstorable(&value, &mut String::new())?;
        let mut doc = match Bson::try_from(value) {
            Ok(Bson::Document(d)) => d,
            // bson reads an object such as {"$oid": …} or {"$date": …} as
            // extended JSON for one value, not a document.
            Ok(other) => {
                return Err(format!(
                    "is extended JSON for a single {:?} value, not a document",
                    other.element_type()
                ));
            }
            Err(e) => return Err(format!("cannot be stored as BSON: {e}")),
        };
        let id = match &self.config.id {
            // The position a replay of this record has again: its
            // partition and the offset that resumes after it.
            IdSpec::Named(IdName::Position) => Some(Bson::String(r.position.id())),
            IdSpec::Named(IdName::None) => None,
            IdSpec::Field { field } => match doc.get(field) {
                Some(v) => Some(v.clone()),
                None => return Err(format!("no field `{field}` for the document's _id")),
            },
        };
        // Upserts find the document by _id in the query; the $set part
        // must not touch it.
        let own = doc.remove("_id");
        if own.is_some() && !matches!(self.config.id, IdSpec::Field { .. }) && self.first_to_tell()
        {
            tracing::warn!(
                pipeline = %self.pipeline,
                "mongodb: records carry an `_id` of their own; with `id: {}` the document's _id is {} \
                 and the record's is not stored (`id: {{field: _id}}` keeps it)",
                if id.is_some() { "position" } else { "none" },
                if id.is_some() {
                    "the record's position"
                } else {
                    "the server's"
                },
            );
        }
        Ok((id, doc))
    }
}

/// Why `v` cannot be stored in BSON as it is, if it cannot: a field name
/// with a NUL byte (BSON names are C strings), or a number that is neither
/// a 64-bit integer nor exactly a double (it would be rounded: 2^64, or 20
/// significant digits). `path` names where, for the message.
fn unstorable(v: &Value, path: &mut String) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k.contains('\0') {
                    return Err(format!(
                        "field name {:?} holds a NUL byte, which BSON field names cannot",
                        format!("{path}{k}")
                    ));
                }
                let len = path.len();
                path.push_str(k);
                path.push('.');
                unstorable(child, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Array(items) => {
            for item in items {
                unstorable(item, path)?;
            }
            Ok(())
        }
        Value::Number(n) if n.as_i64().is_none() && !exact_double(&n.to_string()) => Err(format!(
            "the number {n} in `{}` is not a 64-bit integer and a double would round it: \
                 MongoDB would not store it exactly",
            path.trim_end_matches('.')
        )),
        _ => Ok(()),
    }
}

/// Whether the decimal text is exactly the double nearest to it, as
/// written or in shortest form (`0.1`, `1.5e3`; not `2^64`, not 20 digits).
fn exact_double(text: &str) -> bool {
    let Ok(f) = text.parse::<f64>() else {
        return false;
    };
    if !f.is_finite() {
        return false;
    }
    // The text and the double's own shortest text name the same decimal.
    normalize_decimal(text).is_some_and(|a| normalize_decimal(&format!("{f:e}")) == Some(a))
}

/// A decimal as (digits without leading/trailing zeros, exponent of the
/// first digit), so `1.50e2` and `150` compare equal.
fn normalize_decimal(text: &str) -> Option<(String, i64)> {
    let text = text.trim_start_matches('-');
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let lead = digits.len() - digits.trim_start_matches('0').len();
    let trimmed = digits
        .trim_start_matches('0')
        .trim_end_matches('0')
        .to_string();
    if trimmed.is_empty() {
        return Some((String::new(), 0));
    }
    Some((trimmed, exp + int.len() as i64 - lead as i64))
}

/// One command for `docs` (batch index, _id, document); returns the
/// refused ones.
async fn command(
    db: Database,
    config: Arc<MongoSinkConfig>,
    collection: String,
    docs: Vec<(usize, Option<Bson>, Document)>,
) -> Result<Vec<Rejected>, ConnectorError> {
    let indexes: Vec<usize> = docs.iter().map(|(i, _, _)| *i).collect();
    let (command, sent) = write_command(&config, &collection, docs);
    let reply = db
        .run_command(command)
        .await
        .map_err(|e| classify(&format!("writing to {}.{collection}", config.database), e))?;
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(ConnectorError::Retriable(format!(
            "MongoDB could not make the write durable: {wce}"
        )));
    }
    let (mut rejected, taken) = refusals(&config, &reply, &indexes, !sent.is_empty())?;
    if !taken.is_empty() {
        let stored = db.collection::<Document>(&collection);
        let what = format!("reading back {}.{collection}", config.database);
        rejected.extend(differing(&stored, &what, &sent, &taken, &indexes).await?);
    }
    Ok(rejected)
}

/// The insert or update command for `docs`, journaled; and, with ids from
/// a field, the documents sent: an insert that finds its _id taken may be
/// a replay or a different record with the same key, and what was sent
/// tells them apart.
fn write_command(
    config: &MongoSinkConfig,
    collection: &str,
    docs: Vec<(usize, Option<Bson>, Document)>,
) -> (Document, Vec<Document>) {
    let journaled = doc! {"w": 1, "j": true};
    match config.write_mode() {
        WriteMode::Insert => {
            let documents: Vec<Document> = docs
                .into_iter()
                .map(|(_, id, mut d)| {
                    if let Some(id) = id {
                        d.insert("_id", id);
                    }
                    d
                })
                .collect();
            let sent = match config.id {
                IdSpec::Field { .. } => documents.clone(),
                _ => Vec::new(),
            };
            let command = doc! {
                "insert": collection,
                "documents": documents,
                "ordered": false,
                "writeConcern": journaled,
            };
            (command, sent)
        }
        mode => {
            let updates: Vec<Document> = docs
                .into_iter()
                .map(|(_, id, d)| {
                    let u = if mode == WriteMode::Upsert {
                        doc! {"$set": d}
                    } else {
                        d
                    };
                    doc! {"q": {"_id": id.unwrap_or(Bson::Null)}, "u": u, "upsert": true}
                })
                .collect();
            let command = doc! {
                "update": collection,
                "updates": updates,
                "ordered": false,
                "writeConcern": journaled,
            };
            (command, Vec::new())
        }
    }
}

/// The documents a reply's `writeErrors` refuse (by batch index), and the
/// places in the command of inserts whose _id was taken and that may be
/// replays (`kept_sent`: the documents sent were kept to compare them).
fn refusals(
    config: &MongoSinkConfig,
    reply: &Document,
    indexes: &[usize],
    kept_sent: bool,
) -> Result<(Vec<Rejected>, Vec<usize>), ConnectorError> {
    let mut rejected = Vec::new();
    let mut taken = Vec::new();
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok((rejected, taken));
    };
    for e in errors {
        let Some(e) = e.as_document() else { continue };
        let place = e
            .get("index")
            .and_then(|i| i.as_i32().map(i64::from).or_else(|| i.as_i64()))
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < indexes.len());
        let code = e.get_i32("code").unwrap_or(0);
        let message = e.get_str("errmsg").unwrap_or("refused").to_string();
        // With ids from positions, an insert that finds its _id taken is a
        // replay of what was written before; with ids from a field, it is
        // one if the document there is this one.
        if config.write_mode() == WriteMode::Insert
            && code == DUPLICATE_KEY
            && config.id != IdSpec::Named(IdName::None)
            && is_id_index(e, &message)
        {
            if let (true, Some(place)) = (kept_sent, place) {
                taken.push(place);
            }
            continue;
        }
        let Some(index) = place.map(|i| indexes[i]) else {
            return Err(ConnectorError::Fatal(format!(
                "MongoDB reported an error for no document of the write: {message}"
            )));
        };
        rejected.push(Rejected {
            index,
            error: ConnectorError::Fatal(format!("MongoDB refused it (code {code}): {message}")),
        });
    }
    Ok((rejected, taken))
}

/// Of the documents whose _id was taken (`taken`: places in `sent`), those
/// that differ from the document stored under that _id: refused, as
/// `write: insert` keeps the first record of each id. The same document is
/// a replay: nothing to do.
async fn differing(
    stored_in: &mongodb::Collection<Document>,
    what: &str,
    sent: &[Document],
    taken: &[usize],
    indexes: &[usize],
) -> Result<Vec<Rejected>, ConnectorError> {
    let key = |id: &Bson| id.clone().into_relaxed_extjson().to_string();
    let ids: Vec<Bson> = taken
        .iter()
        .filter_map(|&i| sent[i].get("_id").cloned())
        .collect();
    let mut cursor = stored_in
        .find(doc! {"_id": {"$in": ids}})
        .await
        .map_err(|e| classify(what, e))?;
    let mut stored = std::collections::HashMap::new();
    while cursor.advance().await.map_err(|e| classify(what, e))? {
        let d = cursor
            .deserialize_current()
            .map_err(|e| classify(what, e))?;
        if let Some(id) = d.get("_id") {
            stored.insert(key(id), d);
        }
    }
    let mut refused = Vec::new();
    for &i in taken {
        let Some(id) = sent[i].get("_id") else {
            continue;
        };
        let there = match stored.get(&key(id)) {
            Some(there) => Some(there.clone()),
            // The server matched it under another form (5 and 5.0 are one
            // _id to it): asked by that _id itself.
            None => stored_in
                .find_one(doc! {"_id": id.clone()})
                .await
                .map_err(|e| classify(what, e))?,
        };
        match there {
            Some(there) if there == sent[i] => {}
            Some(_) => refused.push(Rejected {
                index: indexes[i],
                error: ConnectorError::Fatal(format!(
                    "a different document with _id {} is already stored: `write: insert` keeps the first record \
                     of each id (`write: upsert` or `replace` keeps the latest)",
                    key(id)
                )),
            }),
            // Taken when inserted, gone now (deleted meanwhile): written
            // again when the batch is.
            None => {
                return Err(ConnectorError::Retriable(format!(
                    "the document with _id {} was there when inserted and is gone now",
                    key(id)
                )));
            }
        }
    }
    Ok(refused)
}

/// What a command task came back with.
fn finished(
    done: Result<Result<Vec<Rejected>, ConnectorError>, tokio::task::JoinError>,
) -> Result<Vec<Rejected>, ConnectorError> {
    done.map_err(|e| ConnectorError::Fatal(format!("a MongoDB write task failed: {e}")))?
}

/// Whether a duplicate-key error is on `_id` (and not on another unique
/// index): the server names the key pattern, or at least the index.
fn is_id_index(error: &Document, message: &str) -> bool {
    match error.get_document("keyPattern") {
        Ok(pattern) => pattern.len() == 1 && pattern.contains_key("_id"),
        Err(_) => message.contains("index: _id_ "),
    }
}

#[async_trait]
impl Sink for MongoSink {
    async fn close(&mut self) {
        if let Some(db) = self.db.take() {
            crate::client::shut_down(db.client().clone()).await;
        }
    }

    /// Positions live in ferry's offset store: ids make replays harmless.
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        let shown = self.config.redacted_uri();
        let client = connect(&self.config.uri, &shown).await?;
        ping(&client, &shown).await?;
        self.db = Some(client.database(&self.config.database));
        Ok(None)
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        let db = self.db.clone().expect("write after open");
        // Two commands in flight when no two documents of the batch can
        // touch the same _id (ids from positions, or the server's): each
        // journaled command waits for a journal flush, and the server
        // flushes for both at once. With ids from a field, a later record
        // must land after an earlier one with the same id: one at a time.
        let window = match self.config.id {
            IdSpec::Field { .. } => 1,
            _ => 2,
        };
        // Each command runs as a task of its own, so that the next one's
        // documents are made (JSON parsed, converted to BSON) while the
        // server works on it; dropping the set (a write given up) aborts
        // them.
        let mut running = tokio::task::JoinSet::new();
        let mut rejected = Vec::new();
        for (n, records) in batch.chunks(PER_COMMAND).enumerate() {
            // One command per collection of the chunk; a collection's
            // documents keep their order.
            let mut by_collection: Vec<(String, Vec<_>)> = Vec::new();
            for (i, r) in records.iter().enumerate() {
                let index = n * PER_COMMAND + i;
                let made = self
                    .collection_of(r)
                    .and_then(|c| Ok((c, self.document(r)?)));
                match made {
                    Ok((collection, (id, d))) => {
                        match by_collection.iter_mut().find(|(c, _)| *c == *collection) {
                            Some((_, docs)) => docs.push((index, id, d)),
                            None => {
                                by_collection.push((collection.into_owned(), vec![(index, id, d)]))
                            }
                        }
                    }
                    Err(message) => rejected.push(Rejected {
                        index,
                        error: ConnectorError::Fatal(message),
                    }),
                }
            }
            for (collection, docs) in by_collection {
                while running.len() >= window {
                    let done = running.join_next().await.expect("a command is running");
                    rejected.extend(finished(done)?);
                }
                running.spawn(command(db.clone(), self.config.clone(), collection, docs));
            }
        }
        while let Some(done) = running.join_next().await {
            rejected.extend(finished(done)?);
        }
        rejected.sort_by_key(|r| r.index);
        Ok(rejected)
    }

    /// Every write was acknowledged with `j: true`: already durable.
    async fn commit(&mut self, _positions: &Positions) -> Result<(), ConnectorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_bson_cannot_hold_exactly_is_named() {
        let ok = r#"{"a":1,"b":[0.1,1.5e3,-9223372036854775808],"c":{"d":12.50}}"#;
        assert_eq!(
            unstorable(&serde_json::from_str(ok).unwrap(), &mut String::new()),
            Ok(())
        );
        for (bad, says) in [
            (r#"{"a":{"x\u0000y":1}}"#, "NUL"),
            (r#"{"big":18446744073709551616}"#, "18446744073709551616"),
            (r#"{"n":{"v":[0.12345678901234567890]}}"#, "`n.v`"),
            (r#"{"huge":1e400}"#, "1e+400"),
        ] {
            let e =
                unstorable(&serde_json::from_str(bad).unwrap(), &mut String::new()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
