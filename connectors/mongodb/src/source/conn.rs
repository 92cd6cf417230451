//! The server calls of the change-stream source.

use super::*;

/// The connection and what the server calls need, apart from the cursor
/// state: cursors are `Send` but not `Sync`, so an `async fn` may hold a
/// reference to this across an `.await` but not one to the whole source.
/// Shared (`Arc`): each poll takes a handle without copying the config.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) config: MongoSourceConfig,
    pub(super) shown: String,
}

impl Conn {
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn error(&self, what: &str, e: mongodb::error::Error) -> ConnectorError {
        classify(&format!("{what} ({})", self.shown), e)
    }

    /// Opens the change stream on the configured scope, after `resume` or
    /// from now.
    pub(super) async fn watch(&self, from: From) -> Result<Events, mongodb::error::Error> {
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

    /// The server's present (its cluster time), when it reports one.
    pub(super) async fn server_time(&self) -> Result<Option<Timestamp>, ConnectorError> {
        let reply = self
            .client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| self.error("asking for the server's cluster time", e))?;
        Ok(reply
            .get_timestamp("operationTime")
            .or_else(|_| {
                reply
                    .get_document("$clusterTime")
                    .and_then(|c| c.get_timestamp("clusterTime"))
            })
            .ok())
    }

    /// The error for a committed position the server's history no longer
    /// reaches.
    pub(super) fn stale(&self, why: &str) -> ConnectorError {
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
    pub(super) async fn open_at(&self, from: From) -> Result<Events, ConnectorError> {
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
    pub(super) async fn resume(
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
    pub(super) async fn namespaces(&self) -> Result<VecDeque<(String, String)>, ConnectorError> {
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
