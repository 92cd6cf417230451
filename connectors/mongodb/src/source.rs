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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_api::{
    ConnectorError, Partition, Position, Positions, Record, Source, SourceItem, Value,
};
use mongodb::bson::{Bson, Document, Timestamp, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::error::ErrorKind;
use mongodb::options::{ChangeStreamOptions, FullDocumentType};
use mongodb::{Client, Cursor};

use crate::client::{classify, connect, ping};
use crate::config::{FullDocument, MongoSourceConfig, SnapshotMode};

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

struct Snapshot {
    /// The server's cluster time when the snapshot began: the stream
    /// starts there.
    start: Timestamp,
    /// Namespaces still to read, the current one first.
    namespaces: VecDeque<(String, String)>,
    /// The last `_id` read in the current namespace.
    after: Option<Bson>,
    cursor: Option<Cursor<Document>>,
}

/// The connection and what the server calls need, apart from the cursor
/// state: cursors are `Send` but not `Sync`, so an `async fn` may hold a
/// reference to this across an `.await` but not one to the whole source.
/// Shared (`Arc`): each poll takes a handle without copying the config.
struct Conn {
    client: Client,
    config: MongoSourceConfig,
    shown: String,
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

impl Conn {
    fn client(&self) -> &Client {
        &self.client
    }

    fn error(&self, what: &str, e: mongodb::error::Error) -> ConnectorError {
        classify(&format!("{what} ({})", self.shown), e)
    }

    /// Opens the change stream on the configured scope, after `resume` or
    /// from now.
    async fn watch(&self, from: From) -> Result<Events, mongodb::error::Error> {
        let client = self.client();
        let full = match self.config.full_document {
            FullDocument::UpdateLookup => Some(FullDocumentType::UpdateLookup),
            FullDocument::Delta => None,
        };
        let (after, at) = match from {
            From::Now => (None, None),
            From::After(token) => (Some(token), None),
            From::At(time) => (None, Some(time)),
        };
        let options = ChangeStreamOptions::builder()
            .full_document(full)
            .resume_after(after)
            .start_at_operation_time(at)
            .max_await_time(MAX_AWAIT)
            .batch_size(self.config.batch_size)
            .build();
        macro_rules! watch_on {
            ($target:expr) => {{
                let target = $target;
                target.watch().with_options(options).await
            }};
        }
        match (&self.config.database, &self.config.collection) {
            (Some(d), Some(c)) => watch_on!(client.database(d).collection::<Document>(c)),
            (Some(d), None) => watch_on!(client.database(d)),
            _ => watch_on!(client),
        }
    }

    /// The error for a committed position the server's history no longer
    /// reaches.
    fn stale(&self, why: &str) -> ConnectorError {
        ConnectorError::Fatal(format!(
            "the change stream on {} cannot resume from the pipeline's committed position: the \
             server ({}) no longer accepts its resume token ({why}); the changes since then are \
             gone from its history. To start again from a fresh snapshot, reset the pipeline's \
             positions (`ferry offsets reset <pipeline>`, and clear the sink's own when it keeps \
             them) and start it with `snapshot: initial`",
            self.config.scope(),
            self.shown
        ))
    }

    /// Opens the stream at `from`; an error that says the server's history
    /// does not reach back that far becomes [`Conn::stale`].
    async fn open_at(&self, from: From) -> Result<Events, ConnectorError> {
        self.watch(from).await.map_err(|e| {
            let stale = match e.kind.as_ref() {
                ErrorKind::Command(c) => {
                    STALE_TOKEN_CODES.contains(&c.code)
                        || c.message.to_ascii_lowercase().contains("resume")
                }
                _ => false,
            };
            if stale {
                self.stale(&e.to_string())
            } else {
                self.error("resuming the change stream", e)
            }
        })
    }

    /// Resumes after the change whose resume token is `token` and cluster
    /// time `time`.
    ///
    /// Why not just `resumeAfter`: a server is supposed to refuse a token
    /// older than its history, but not every MongoDB-wire server does
    /// (SecantusDB resumes from its present, silently skipping the changes
    /// in between). So the stream starts at the change's cluster time and
    /// must find that very change there before anything after it is
    /// trusted; a server that no longer has it gets the same clear error as
    /// one that refuses the token.
    async fn resume(
        &self,
        token: ResumeToken,
        time: Option<Timestamp>,
    ) -> Result<Events, ConnectorError> {
        let Some(time) = time else {
            return self.open_at(From::After(token)).await;
        };
        let mut stream = self.open_at(From::At(time)).await?;
        let deadline = Instant::now() + RESUME_CHECK;
        loop {
            let ev = stream
                .next_if_any()
                .await
                .map_err(|e| self.error("resuming the change stream", e))?;
            match ev {
                Some(ev) if ev.id == token => return Ok(stream),
                Some(ev) if ev.cluster_time.is_some_and(|t| t > time) => {
                    return Err(self.stale(&format!(
                        "its change at {}.{} is not in the server's history, which goes on at {}",
                        time.time,
                        time.increment,
                        ev.cluster_time
                            .map_or(String::new(), |t| format!("{}.{}", t.time, t.increment))
                    )));
                }
                // Earlier changes of the same cluster time (one transaction).
                Some(_) => {}
                None if Instant::now() > deadline => {
                    return Err(self.stale(&format!(
                        "the server has no change at or after {}.{}",
                        time.time, time.increment
                    )));
                }
                None => {}
            }
        }
    }

    /// The namespaces a snapshot reads, in name order.
    async fn namespaces(&self) -> Result<VecDeque<(String, String)>, ConnectorError> {
        let client = self.client();
        let databases = match &self.config.database {
            Some(d) => vec![d.clone()],
            None => client
                .list_database_names()
                .await
                .map_err(|e| self.error("listing databases", e))?
                .into_iter()
                .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
                .collect(),
        };
        let mut all = Vec::new();
        for d in databases {
            let collections = match &self.config.collection {
                Some(c) => vec![c.clone()],
                None => client
                    .database(&d)
                    .list_collection_names()
                    .await
                    .map_err(|e| self.error(&format!("listing the collections of {d}"), e))?
                    .into_iter()
                    .filter(|c| !c.starts_with("system."))
                    .collect(),
            };
            all.extend(collections.into_iter().map(|c| (d.clone(), c)));
        }
        all.sort();
        Ok(all.into())
    }
}

impl ChangeStreamSource {
    pub(crate) fn new(config: MongoSourceConfig) -> Self {
        let scope = config.scope();
        ChangeStreamSource {
            shown: config.redacted_uri(),
            partition: Arc::new(Partition {
                key: format!("mongodb:{scope}"),
                info: serde_json::json!({ "path": format!("mongodb {scope}") }),
            }),
            config,
            conn: None,
            phase: Phase::Closed,
            caught_up: false,
            ended: None,
        }
    }

    /// The connection, a shared handle, so that the
    /// caller may hold it across `.await`s while it changes `self`.
    fn conn(&self) -> Arc<Conn> {
        self.conn.clone().expect("used after open")
    }

    /// Starts a snapshot: notes where the change stream stands now, then
    /// lists what to read.
    async fn begin_snapshot(&mut self) -> Result<(), ConnectorError> {
        let conn = self.conn();
        // The server's present: every change the snapshot might not see
        // happens at or after it.
        let reply = conn
            .client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| conn.error("asking for the server's cluster time", e))?;
        let start = reply
            .get_timestamp("operationTime")
            .or_else(|_| {
                reply
                    .get_document("$clusterTime")
                    .and_then(|c| c.get_timestamp("clusterTime"))
            })
            .map_err(|_| {
                ConnectorError::Fatal(format!(
                    "the server ({}) reports no cluster time, so a snapshot cannot be joined to \
                     the change stream without a gap; use `snapshot: never`",
                    self.shown
                ))
            })?;
        let namespaces = conn.namespaces().await?;
        tracing::info!(
            scope = %self.config.scope(),
            collections = namespaces.len(),
            "mongodb: reading the initial snapshot"
        );
        self.phase = Phase::Snapshot(Box::new(Snapshot {
            start,
            namespaces,
            after: None,
            cursor: None,
        }));
        Ok(())
    }

    /// Carries a snapshot on from a committed snapshot position.
    async fn resume_snapshot(&mut self, at: &Value) -> Result<(), ConnectorError> {
        let bad = || {
            ConnectorError::Fatal(format!(
                "the committed position of {} is not a snapshot position ferry wrote: {at}",
                self.partition.key
            ))
        };
        let start = at
            .get("time")
            .and_then(timestamp_from_json)
            .ok_or_else(bad)?;
        let ns = at.get("ns").and_then(Value::as_str).ok_or_else(bad)?;
        let after = match at.get("after") {
            Some(v) => Some(Bson::try_from(v.clone()).map_err(|_| bad())?),
            None => None,
        };
        let mut namespaces = self.conn().namespaces().await?;
        // Namespaces before the current one are done.
        while namespaces.front().is_some_and(|n| ns_name(n).as_str() < ns) {
            namespaces.pop_front();
        }
        let current = namespaces.front().is_some_and(|n| ns_name(n) == ns);
        self.phase = Phase::Snapshot(Box::new(Snapshot {
            start,
            namespaces,
            after: if current { after } else { None },
            cursor: None,
        }));
        Ok(())
    }

    /// Reads up to `max` snapshot documents; at the end of the snapshot
    /// moves on to the stream.
    async fn poll_snapshot(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let conn = self.conn();
        let Phase::Snapshot(snap) = &mut self.phase else {
            unreachable!("called in the snapshot phase")
        };
        let client = &conn.client;
        let mut items = Vec::new();
        while items.len() < max {
            let Some((db, coll)) = snap.namespaces.front().cloned() else {
                break;
            };
            let what = format!("reading the snapshot of {db}.{coll}");
            if snap.cursor.is_none() {
                let filter = match &snap.after {
                    Some(id) => doc! {"_id": {"$gt": id.clone()}},
                    None => doc! {},
                };
                let cursor = client
                    .database(&db)
                    .collection::<Document>(&coll)
                    .find(filter)
                    .sort(doc! {"_id": 1})
                    .batch_size(self.config.batch_size)
                    .await
                    .map_err(|e| classify(&format!("{what} ({})", self.shown), e))?;
                snap.cursor = Some(cursor);
            }
            let cursor = snap.cursor.as_mut().expect("opened above");
            let more = cursor
                .advance()
                .await
                .map_err(|e| classify(&format!("{what} ({})", self.shown), e))?;
            if !more {
                snap.namespaces.pop_front();
                snap.cursor = None;
                snap.after = None;
                continue;
            }
            let document = cursor
                .deserialize_current()
                .map_err(|e| ConnectorError::Fatal(format!("{what}: {e}")))?;
            let id = document.get("_id").cloned().unwrap_or(Bson::Null);
            snap.after = Some(id.clone());
            let offset = serde_json::json!({"snapshot": {
                "time": Bson::Timestamp(snap.start).into_canonical_extjson(),
                "ns": format!("{db}.{coll}"),
                "after": id.clone().into_canonical_extjson(),
            }});
            let value = serde_json::json!({
                "operation": "snapshot",
                "database": db,
                "collection": coll,
                "key": {"_id": json(id.clone())},
                "document": json(Bson::Document(document)),
            });
            let mut r = Record::new(
                value,
                Position {
                    partition: self.partition.clone(),
                    offset,
                },
            );
            r.key = Some(json(id));
            items.push(SourceItem::Record(r));
        }
        if snap.namespaces.is_empty() {
            let start = snap.start;
            tracing::info!(scope = %self.config.scope(), "mongodb: snapshot read; streaming changes");
            let stream = conn.open_at(From::At(start)).await?;
            self.phase = Phase::Stream(Box::new(stream));
        }
        Ok(items)
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
    async fn open(&mut self, committed: &Positions) -> Result<(), ConnectorError> {
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
