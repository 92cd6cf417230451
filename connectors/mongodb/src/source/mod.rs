//! The MongoDB source: a change stream, with an optional resumable snapshot
//! of the documents already there before it.
//!
//! ## Positions
//!
//! One partition per watched scope (`mongodb:db.coll`, `mongodb:db`,
//! `mongodb:*`). Its offset is one of
//! * `{"token": T}` — streaming: resume after the change whose resume token
//!   is `T` (MongoDB's extended JSON, canonical, so it round-trips exactly);
//! * `{"snapshot": {"token": T0, "ns": "db.coll", "after": ID}}` — reading
//!   the snapshot: namespaces are read in name order and each in `_id`
//!   order, so "everything in `ns` up to `_id` ID, and every namespace before
//!   it" is done. `T0` is where the change stream stood when the snapshot
//!   began; once the snapshot is read the stream resumes there, so no change
//!   made during the snapshot is missed.
//!
//! ## Why the stream is opened before the snapshot is read
//!
//! A change made between "the snapshot read this document" and "the stream
//! started" would otherwise be lost. Opening the stream first and resuming at
//! its start token after the snapshot replays every change from the moment the
//! snapshot began; the price is that a document changed during the snapshot
//! shows up in it (as it was when read) and again as the change event.
//!
//! Files by job: `conn.rs` (the server calls: opening and resuming the
//! stream, listing namespaces), `snapshot.rs` (reading what was there
//! before the stream); this file is the `Source`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_api::{
    ConnectorError, Partition, Position, Positions, Record, Source, SourceContext, SourceItem,
    Value,
};
use mongodb::bson::{Bson, Document, Timestamp, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::error::ErrorKind;
use mongodb::options::{ChangeStreamOptions, FullDocumentType};
use mongodb::{Client, Cursor};

use crate::client::{classify, connect, ping};
use crate::config::{FullDocument, MongoSourceConfig, SnapshotMode};

mod conn;
mod snapshot;

use conn::Conn;
use snapshot::Snapshot;
/// Where a change stream starts.
enum From {
    /// The present.
    Now,
    /// After the change with this resume token.
    After(ResumeToken),
    /// At this cluster time (changes at it included).
    At(Timestamp),
}

/// How long resuming waits for the server to show the committed change.
const RESUME_CHECK: Duration = Duration::from_secs(10);

/// How long one `getMore` of the change stream waits for new events: a poll
/// returns empty after about this long when nothing changes.
const MAX_AWAIT: Duration = Duration::from_millis(300);

/// Databases a whole-server snapshot leaves out: MongoDB's own.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "config", "local"];

/// Server error codes that mean the resume token is no longer usable:
/// InvalidResumeToken, ChangeStreamFatalError, ChangeStreamHistoryLost.
const STALE_TOKEN_CODES: [i32; 3] = [260, 280, 286];

type Events = ChangeStream<ChangeStreamEvent<Document>>;

enum Phase {
    /// Before `open`.
    Closed,
    Snapshot(Box<Snapshot>),
    Stream(Box<Events>),
}

pub(crate) struct ChangeStreamSource {
    config: MongoSourceConfig,
    shown: String,
    partition: Arc<Partition>,
    conn: Option<Arc<Conn>>,
    phase: Phase,
    /// The last poll of the stream found nothing new.
    caught_up: bool,
    /// The stream ended for good (invalidated): reported at the next poll,
    /// after what came before it was handed over.
    ended: Option<String>,
}

/// A document (or any BSON) as the JSON records carry: relaxed extended JSON
/// (`{"$oid": …}`, `{"$date": …}`; plain numbers stay plain).
fn json(b: Bson) -> Value {
    b.into_relaxed_extjson()
}

fn token_json(token: &ResumeToken) -> Result<Value, ConnectorError> {
    mongodb::bson::to_bson(token)
        .map(Bson::into_canonical_extjson)
        .map_err(|e| ConnectorError::Fatal(format!("storing a resume token: {e}")))
}

fn token_from_json(v: &Value) -> Option<ResumeToken> {
    let b = Bson::try_from(v.clone()).ok()?;
    mongodb::bson::from_bson(b).ok()
}

fn timestamp_from_json(v: &Value) -> Option<Timestamp> {
    match Bson::try_from(v.clone()).ok()? {
        Bson::Timestamp(t) => Some(t),
        _ => None,
    }
}

fn ns_name((db, coll): &(String, String)) -> String {
    format!("{db}.{coll}")
}

impl ChangeStreamSource {
    pub(crate) fn new(config: MongoSourceConfig) -> Self {
        let scope = config.scope();
        ChangeStreamSource {
            shown: config.redacted_uri(),
            partition: Arc::new(
                Partition::new(format!("mongodb:{scope}")).labelled(format!("mongodb {scope}")),
            ),
            config,
            conn: None,
            phase: Phase::Closed,
            caught_up: false,
            ended: None,
        }
    }

    /// How far the change stream is behind: the seconds between the
    /// server's present and the first change after the committed position
    /// (0 when there is none). None while a snapshot is read or before
    /// anything was committed. For the lag probe: it opens a stream of its
    /// own at the committed position, beside the pipeline's.
    pub(crate) async fn seconds_behind(
        &mut self,
        committed: &Positions,
    ) -> Result<Option<f64>, ConnectorError> {
        if self.conn.is_none() {
            let client = connect(&self.config.uri, &self.shown).await?;
            self.conn = Some(Arc::new(Conn {
                client,
                config: self.config.clone(),
                shown: self.shown.clone(),
            }));
        }
        let conn = self.conn();
        let Some(offset) = committed.get(&self.partition.key).map(|p| p.offset.clone()) else {
            return Ok(None);
        };
        let Some(token) = offset.get("token").and_then(token_from_json) else {
            return Ok(None);
        };
        let time = offset.get("time").and_then(timestamp_from_json);
        let mut stream = conn.resume(token, time).await?;
        let next = stream
            .next_if_any()
            .await
            .map_err(|e| conn.error("measuring the lag", e))?;
        let Some(pending) = next.and_then(|ev| ev.cluster_time) else {
            return Ok(Some(0.0));
        };
        let now = conn.server_time().await?;
        Ok(now.map(|now| f64::from(now.time.saturating_sub(pending.time))))
    }

    /// The position of the watched scope at `offset`, a resume token the
    /// server takes: a change stream is opened from it to see.
    pub(crate) async fn resume_point(
        &mut self,
        partition: &str,
        offset: &Value,
    ) -> Result<Position, ConnectorError> {
        if partition != self.partition.key {
            return Err(ConnectorError::Fatal(format!(
                "this source has one partition, {:?}",
                self.partition.key
            )));
        }
        if offset.get("token").and_then(token_from_json).is_none() {
            return Err(ConnectorError::Fatal(
                "a change stream's offset is {\"token\": <the resume token, as GET .../offsets shows it>, \"time\": …}"
                    .to_string(),
            ));
        }
        let position = Position {
            partition: self.partition.clone(),
            offset: offset.clone(),
        };
        let mut at = Positions::new();
        at.advance(&position);
        self.seconds_behind(&at).await.map_err(|e| match e {
            ConnectorError::Fatal(why) => {
                ConnectorError::Fatal(format!("the server does not resume from this token: {why}"))
            }
            retriable => retriable,
        })?;
        Ok(position)
    }

    /// The partition of the watched scope.
    pub(crate) fn partition(&self) -> &Partition {
        &self.partition
    }

    /// The connection, a shared handle, so that the
    /// caller may hold it across `.await`s while it changes `self`.
    fn conn(&self) -> Arc<Conn> {
        self.conn.clone().expect("used after open")
    }

    fn event_item(
        &mut self,
        ev: ChangeStreamEvent<Document>,
    ) -> Result<SourceItem, ConnectorError> {
        let operation = match &ev.operation_type {
            OperationType::Insert => "insert",
            OperationType::Update => "update",
            OperationType::Replace => "replace",
            OperationType::Delete => "delete",
            OperationType::Drop => "drop",
            OperationType::Rename => "rename",
            OperationType::DropDatabase => "dropDatabase",
            OperationType::Invalidate => "invalidate",
            OperationType::Other(other) => other.as_str(),
            _ => "other",
        }
        .to_string();
        let position = Position {
            partition: self.partition.clone(),
            offset: match ev.cluster_time {
                Some(t) => serde_json::json!({
                    "token": token_json(&ev.id)?,
                    "time": Bson::Timestamp(t).into_canonical_extjson(),
                }),
                None => serde_json::json!({ "token": token_json(&ev.id)? }),
            },
        };
        let (database, collection) = match &ev.ns {
            Some(ns) => (
                Value::from(ns.db.clone()),
                ns.coll.clone().map_or(Value::Null, Value::from),
            ),
            None => (Value::Null, Value::Null),
        };
        let id = ev.document_key.as_ref().and_then(|k| k.get("_id")).cloned();
        let mut value = serde_json::json!({
            "operation": operation,
            "database": database,
            "collection": collection,
            "key": ev.document_key.map_or(Value::Null, |k| json(Bson::Document(k))),
            "document": ev.full_document.map_or(Value::Null, |d| json(Bson::Document(d))),
        });
        if let Some(u) = ev.update_description {
            value["update"] = serde_json::json!({
                "updated": json(Bson::Document(u.updated_fields)),
                "removed": u.removed_fields,
            });
        }
        if let Some(to) = ev.to {
            value["to"] = serde_json::json!({"database": to.db, "collection": to.coll});
        }
        let mut r = Record::new(value, position);
        r.key = id.map(json);
        r.timestamp_ms = ev
            .wall_time
            .map(|t| t.timestamp_millis())
            .or(ev.cluster_time.map(|t| i64::from(t.time) * 1000));
        Ok(SourceItem::Record(r))
    }

    async fn poll_stream(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let mut items = Vec::new();
        let mut drained = false;
        while items.len() < max {
            let Phase::Stream(stream) = &mut self.phase else {
                unreachable!("called in the stream phase")
            };
            // One getMore at most when the fetched batch is used up; it
            // waits up to MAX_AWAIT for new changes.
            match stream.next_if_any().await {
                Ok(Some(ev)) => {
                    if ev.operation_type == OperationType::Invalidate {
                        self.ended = Some(format!(
                            "the change stream on {} was invalidated (the collection was dropped or \
                             renamed, or the database dropped): everything before that point was \
                             delivered. To follow what is there now, reset the pipeline's positions \
                             (`ferry offsets reset <pipeline>`) and start it again",
                            self.config.scope()
                        ));
                        break;
                    }
                    items.push(self.event_item(ev)?);
                }
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(e) => {
                    if items.is_empty() {
                        return Err(self.conn().error("reading the change stream", e));
                    }
                    // Hand over what was read; the next poll reports it.
                    tracing::warn!(error = %e, "mongodb: reading the change stream");
                    break;
                }
            }
        }
        self.caught_up = drained && items.is_empty();
        Ok(items)
    }
}

#[async_trait]
impl Source for ChangeStreamSource {
    async fn open(
        &mut self,
        committed: &Positions,
        _: &SourceContext,
    ) -> Result<(), ConnectorError> {
        let client = connect(&self.config.uri, &self.shown).await?;
        ping(&client, &self.shown).await?;
        let conn = Arc::new(Conn {
            client,
            config: self.config.clone(),
            shown: self.shown.clone(),
        });
        self.conn = Some(conn.clone());
        let offset = committed.get(&self.partition.key).map(|p| p.offset.clone());
        match offset {
            Some(o) if o.get("token").is_some() => {
                let token = token_from_json(&o["token"]).ok_or_else(|| {
                    ConnectorError::Fatal(format!(
                        "the committed position of {} holds no resume token ferry can read: {o}",
                        self.partition.key
                    ))
                })?;
                let time = o.get("time").and_then(timestamp_from_json);
                let stream = conn.resume(token, time).await?;
                self.phase = Phase::Stream(Box::new(stream));
            }
            Some(o) if o.get("snapshot").is_some() => self.resume_snapshot(&o["snapshot"]).await?,
            Some(o) => {
                return Err(ConnectorError::Fatal(format!(
                    "the committed position of {} is not one ferry's MongoDB source wrote: {o}",
                    self.partition.key
                )));
            }
            None => match self.config.snapshot {
                SnapshotMode::Initial => self.begin_snapshot().await?,
                SnapshotMode::Never => {
                    let stream = conn
                        .watch(From::Now)
                        .await
                        .map_err(|e| conn.error("opening the change stream", e))?;
                    self.phase = Phase::Stream(Box::new(stream));
                }
            },
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        if let Some(ended) = self.ended.take() {
            return Err(ConnectorError::Fatal(ended));
        }
        match self.phase {
            Phase::Closed => unreachable!("polled before open"),
            Phase::Snapshot(_) => {
                self.caught_up = false;
                self.poll_snapshot(max).await
            }
            Phase::Stream(_) => self.poll_stream(max).await,
        }
    }

    /// Caught up when the stream's last `getMore` brought nothing; never
    /// while the snapshot is being read.
    fn idle(&self) -> bool {
        self.caught_up
    }

    async fn close(&mut self) {
        self.phase = Phase::Closed;
        if let Some(conn) = self.conn.take() {
            crate::client::shut_down(conn.client.clone()).await;
        }
    }
}

/// The change stream's lag, in seconds behind the server's present.
pub(crate) struct Behind(pub(crate) ChangeStreamSource);

#[async_trait]
impl ferry_api::Backlog for Behind {
    async fn measure(
        &mut self,
        committed: &Positions,
    ) -> Result<Vec<ferry_api::Lag>, ConnectorError> {
        match self.0.seconds_behind(committed).await {
            Ok(seconds) => Ok(seconds
                .map(|amount| ferry_api::Lag {
                    partition: self.0.partition().key.clone(),
                    label: self.0.partition().label().to_string(),
                    amount,
                    unit: "seconds",
                    estimate: false,
                })
                .into_iter()
                .collect()),
            Err(e) => {
                // A fresh connection next time.
                self.0.close().await;
                Err(e)
            }
        }
    }
}
