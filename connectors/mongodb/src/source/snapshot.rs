//! The snapshot before the stream: what a collection held when it began.

use super::*;

/// Where a snapshot stands.
pub(super) struct Snapshot {
    /// The server's cluster time when the snapshot began: the stream
    /// starts there.
    pub(super) start: Timestamp,
    /// Namespaces still to read, the current one first.
    pub(super) namespaces: VecDeque<(String, String)>,
    /// The last `_id` read in the current namespace.
    pub(super) after: Option<Bson>,
    pub(super) cursor: Option<Cursor<Document>>,
}

impl ChangeStreamSource {
    /// Starts a snapshot: notes where the change stream stands now, then
    /// lists what to read.
    pub(super) async fn begin_snapshot(&mut self) -> Result<(), ConnectorError> {
        let conn = self.conn();
        // The server's present: every change the snapshot might not see
        // happens at or after it.
        let start = conn.server_time().await?.ok_or_else(|| {
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
    pub(super) async fn resume_snapshot(&mut self, at: &Value) -> Result<(), ConnectorError> {
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
    pub(super) async fn poll_snapshot(
        &mut self,
        max: usize,
    ) -> Result<Vec<SourceItem>, ConnectorError> {
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
}
