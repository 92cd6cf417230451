//! The Elasticsearch sink: `_bulk` requests with explicit `_id`s, every item
//! of every answer read, retries with exponential backoff and jitter.
//!
//! ## What happens to each document
//!
//! * 2xx: written. Elasticsearch acknowledges an item once it is in the
//!   shard's translog, which is fsynced per request by default
//!   (`index.translog.durability: request`): a written item is durable, so
//!   `commit` has nothing left to do and positions are saved right after.
//! * 409 on `create` with ids from positions: the document of a replay is
//!   already there — done, not an error. With ids from a field it is a real
//!   conflict and goes to the error-tolerance path.
//! * 429 or 5xx (one item, or the whole request), or no answer at all: sent
//!   again, only what failed, after a backoff; after `retry.max_retries` the
//!   write fails retriably and the runtime restarts the pipeline from its
//!   committed positions after its own backoff — the pipeline pauses,
//!   reports, and carries on when the cluster is back. Meanwhile nothing is
//!   read beyond the engine's bounded queue: a slow cluster slows the source.
//! * Any other 4xx item (a mapping or parsing error): refused, with the
//!   server's reason; the runtime dead-letters it or stops, by `tolerance`.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{MultiNodeConnectionPool, Transport, TransportBuilder};
use elasticsearch::http::{Method, Url};
use ferry_api::{ConnectorError, Positions, Record, Rejected, Sink, Value};
use ferry_connector_kit::{IdName, IdSpec, redact_url};
use serde::Deserialize;

use crate::config::{Action, ElasticsearchSinkConfig};
use crate::index::IndexTemplate;

/// Elasticsearch refuses longer `_id`s.
const MAX_ID_BYTES: usize = 512;

pub(crate) fn transport(config: &ElasticsearchSinkConfig) -> Result<Transport, ConnectorError> {
    let urls = config
        .urls
        .iter()
        .map(|u| {
            Url::parse(u).map_err(|e| {
                ConnectorError::Fatal(format!("bad Elasticsearch URL {}: {e}", redact_url(u)))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None))
        .disable_proxy()
        .timeout(config.timeout);
    if let Some(auth) = &config.auth {
        match (&auth.username, &auth.password, &auth.api_key) {
            (Some(user), Some(password), _) => {
                builder = builder.auth(Credentials::Basic(user.clone(), password.clone()))
            }
            (_, _, Some(key)) => {
                // The encoded form (base64 of `id:key`) that Elasticsearch
                // hands out goes into the header as it is.
                let value = HeaderValue::from_str(&format!("ApiKey {key}")).map_err(|_| {
                    ConnectorError::Fatal("auth.api_key has characters a header cannot hold".into())
                })?;
                builder = builder.header(AUTHORIZATION, value);
            }
            _ => {}
        }
    }
    if let Some(tls) = &config.tls {
        let pem = std::fs::read(&tls.ca_file).map_err(|e| {
            ConnectorError::Fatal(format!(
                "reading tls.ca_file {}: {e}",
                tls.ca_file.display()
            ))
        })?;
        let ca = Certificate::from_pem(&pem).map_err(|e| {
            ConnectorError::Fatal(format!("tls.ca_file {}: {e}", tls.ca_file.display()))
        })?;
        builder = builder.cert_validation(CertificateValidation::Full(ca));
    }
    builder
        .build()
        .map_err(|e| ConnectorError::Fatal(format!("Elasticsearch client: {e}")))
}

/// An error with its causes: the client's own message ("error sending
/// request") hides the one that says why (a refused connection, an
/// untrusted certificate).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One item's answer in a bulk response.
#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct BulkResponse {
    /// One single-key map (`{"index": {…}}`) per action, in order.
    items: Vec<std::collections::HashMap<String, ItemResult>>,
}

/// `status type: reason (caused by type: reason)` of an item's error.
fn describe_error(status: u16, error: &Option<Value>) -> String {
    let Some(e) = error else {
        return format!("status {status}");
    };
    let part = |e: &Value| {
        format!(
            "{}: {}",
            e["type"].as_str().unwrap_or("error"),
            e["reason"].as_str().unwrap_or("")
        )
    };
    match e.get("caused_by") {
        Some(c) => format!("{status} {} (caused by {})", part(e), part(c)),
        None if e.is_object() => format!("{status} {}", part(e)),
        None => format!("{status} {e}"),
    }
}

/// Why a whole request failed.
enum Failure {
    /// Worth sending again (429, 5xx, no answer).
    Again(String),
    /// Not (a refused request, credentials, a malformed answer).
    Fatal(String),
}

pub(crate) struct ElasticsearchSink {
    config: ElasticsearchSinkConfig,
    template: IndexTemplate,
    transport: Transport,
    shown: String,
    stopping: ferry_api::Stopping,
    /// The pipeline's `retries`: each bulk request sent again counts.
    retries: ferry_api::Retries,
}

impl ElasticsearchSink {
    pub(crate) fn new(
        config: ElasticsearchSinkConfig,
        stopping: ferry_api::Stopping,
        retries: ferry_api::Retries,
    ) -> Result<Self, ConnectorError> {
        let template = IndexTemplate::parse(&config.index).map_err(ConnectorError::Fatal)?;
        Ok(ElasticsearchSink {
            stopping,
            retries,
            transport: transport(&config)?,
            shown: config.shown_urls(),
            template,
            config,
        })
    }

    /// The action and source lines of a record.
    fn item(&self, r: &Record, now: i64) -> Result<Vec<u8>, String> {
        if !r.value.is_object() {
            return Err("not a JSON object: an Elasticsearch document must be one".into());
        }
        let index = self.template.render(r, now)?;
        let id = match &self.config.id {
            // The position a replay of this record has again.
            IdSpec::Named(IdName::Position) => Some(r.position.id()),
            IdSpec::Named(IdName::None) => None,
            IdSpec::Field { field } => match r.value.get(field) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(_) => {
                    return Err(format!(
                        "field `{field}` is not a string or number, so it cannot be an _id"
                    ));
                }
                None => return Err(format!("no field `{field}` for the document's _id")),
            },
        };
        if let Some(id) = &id
            && id.len() > MAX_ID_BYTES
        {
            return Err(format!(
                "its _id is {} bytes; Elasticsearch takes at most {MAX_ID_BYTES}",
                id.len()
            ));
        }
        let action = match self.config.action {
            Action::Index => "index",
            Action::Create => "create",
            Action::Update => "update",
        };
        let meta = match id {
            Some(id) => serde_json::json!({ action: {"_index": index, "_id": id} }),
            None => serde_json::json!({ action: {"_index": index} }),
        };
        let mut line = serde_json::to_vec(&meta).expect("JSON");
        line.push(b'\n');
        match self.config.action {
            Action::Update => serde_json::to_writer(
                &mut line,
                &serde_json::json!({"doc": &r.value, "doc_as_upsert": true}),
            ),
            _ => {
                // The source's JSON text as it came, when there is one.
                r.value.write_json(&mut line);
                Ok(())
            }
        }
        .expect("JSON");
        line.push(b'\n');
        Ok(line)
    }

    /// Sends one `_bulk` request; returns each item's answer.
    async fn send(&self, body: Vec<u8>, expected: usize) -> Result<Vec<ItemResult>, Failure> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let response = self
            .transport
            .send(
                Method::Post,
                "/_bulk",
                headers,
                None::<&()>,
                Some(body),
                None,
            )
            .await
            .map_err(|e| {
                Failure::Again(format!(
                    "no answer from Elasticsearch at {}: {}",
                    self.shown,
                    chain(&e)
                ))
            })?;
        let status = response.status_code().as_u16();
        if status == 429 || status >= 500 {
            let text = response.text().await.unwrap_or_default();
            return Err(Failure::Again(format!(
                "Elasticsearch answered the bulk request with {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        if !(200..300).contains(&status) {
            let text = response.text().await.unwrap_or_default();
            let hint = match status {
                401 | 403 => " (check `auth`)",
                413 => " (lower `bulk.max_bytes`)",
                _ => "",
            };
            return Err(Failure::Fatal(format!(
                "Elasticsearch at {} refused the bulk request with {status}{hint}: {}",
                self.shown,
                text.chars().take(500).collect::<String>()
            )));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Again(format!("reading Elasticsearch's answer: {e}")))?;
        // Garbled or cut short on the way: which documents were written is
        // unknown, and sending them again is harmless.
        let parsed: BulkResponse = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Again(format!(
                "Elasticsearch's answer to a bulk request is not one: {e}"
            ))
        })?;
        if parsed.items.len() != expected {
            return Err(Failure::Fatal(format!(
                "Elasticsearch answered {} items for {expected} actions",
                parsed.items.len()
            )));
        }
        Ok(parsed
            .items
            .into_iter()
            .map(|m| {
                m.into_values().next().unwrap_or(ItemResult {
                    status: 0,
                    error: None,
                })
            })
            .collect())
    }

    /// Writes `items` (batch index, lines), sending again what the cluster
    /// could not take; returns the documents it refused.
    async fn write_request(
        &self,
        items: &[(usize, Vec<u8>)],
        batch: &[Record],
    ) -> Result<Vec<Rejected>, ConnectorError> {
        let replay_conflicts_are_done = self.config.action == Action::Create
            && self.config.id == IdSpec::Named(IdName::Position);
        let mut rejected = Vec::new();
        let mut pending: Vec<&(usize, Vec<u8>)> = items.iter().collect();
        let mut attempt = 0;
        // The runtime's backoff, with this sink's own pace: a resend is
        // cheaper than a restart of the pipeline.
        let mut backoff = ferry_api::Backoff::new(
            self.config.retry.initial_backoff,
            self.config.retry.max_backoff,
        );
        loop {
            let mut body = Vec::with_capacity(pending.iter().map(|(_, b)| b.len()).sum());
            for (_, lines) in &pending {
                body.extend_from_slice(lines);
            }
            let why = match self.send(body, pending.len()).await {
                Ok(results) => {
                    let mut again = Vec::new();
                    let mut again_status = Vec::new();
                    for (item, result) in pending.iter().zip(results) {
                        match result.status {
                            200..=299 => {}
                            409 if replay_conflicts_are_done => {}
                            429 | 500..=599 => {
                                again_status.push(describe_error(result.status, &result.error));
                                again.push(*item);
                            }
                            status => rejected.push(Rejected {
                                index: item.0,
                                error: ConnectorError::Fatal(format!(
                                    "Elasticsearch refused the document at {}: {}",
                                    batch[item.0].position.describe(),
                                    describe_error(status, &result.error)
                                )),
                            }),
                        }
                    }
                    if again.is_empty() {
                        return Ok(rejected);
                    }
                    let why = format!(
                        "{} of {} documents not taken ({})",
                        again.len(),
                        pending.len(),
                        again_status[0]
                    );
                    pending = again;
                    why
                }
                Err(Failure::Again(why)) => why,
                Err(Failure::Fatal(why)) => return Err(ConnectorError::Fatal(why)),
            };
            attempt += 1;
            if attempt > self.config.retry.max_retries {
                return Err(ConnectorError::Retriable(format!(
                    "Elasticsearch at {}: still failing after {} retries: {why}",
                    self.shown, self.config.retry.max_retries
                )));
            }
            let wait = backoff.next_delay();
            self.retries.count();
            tracing::warn!(
                "elasticsearch: {why}; retry {attempt} of {} in {} ms",
                self.config.retry.max_retries,
                wait.as_millis()
            );
            if !self.stopping.sleep(wait).await {
                return Err(ConnectorError::Retriable(format!(
                    "Elasticsearch at {}: ferry is stopping; not retrying ({why})",
                    self.shown
                )));
            }
        }
    }
}

/// GET on `path` below the configured URL (a path in the URL is kept as a
/// prefix of every request).
async fn get(
    transport: &Transport,
    shown: &str,
    path: &str,
) -> Result<elasticsearch::http::response::Response, ConnectorError> {
    transport
        .send(
            Method::Get,
            path,
            HeaderMap::new(),
            None::<&()>,
            None::<Vec<u8>>,
            None,
        )
        .await
        .map_err(|e| {
            ConnectorError::Retriable(format!(
                "no answer from Elasticsearch at {shown}: {}",
                chain(&e)
            ))
        })
}

/// What answered `GET /` at the configured URL.
pub(crate) enum Server {
    /// `Elasticsearch 8.15.3`, `OpenSearch 3.8.0`.
    Known(String),
    /// It would not say (403: credentials without the `monitor` privilege,
    /// which writing does not need).
    Unsaid { status: u16, hint: &'static str },
}

/// What answers at the configured URL, from `GET /`: the same question for
/// `--check-connections` and for opening the sink, so the two agree. A
/// server that answers as neither Elasticsearch nor OpenSearch do (a 200
/// without `version.number`), and a URL whose path is not a cluster's root
/// (404: Elasticsearch would even take `POST /nope/_bulk`, reading `nope`
/// as a default index), fail both; a 403 passes both.
pub(crate) async fn identify(transport: &Transport, shown: &str) -> Result<Server, ConnectorError> {
    let root = get(transport, shown, "/").await?;
    let status = root.status_code().as_u16();
    let text = root.text().await.unwrap_or_default();
    let excerpt: String = text.chars().take(200).collect();
    match status {
        200..=299 => {}
        403 => {
            return Ok(Server::Unsaid {
                status,
                hint: "credentials without the `monitor` privilege; writing does not need it",
            });
        }
        408 | 429 | 500.. => {
            return Err(ConnectorError::Retriable(format!(
                "Elasticsearch at {shown} answered GET / with {status}: {excerpt}"
            )));
        }
        401 => {
            return Err(ConnectorError::Fatal(format!(
                "Elasticsearch at {shown} refused the credentials: 401 (check `auth`)"
            )));
        }
        _ => {
            return Err(ConnectorError::Fatal(format!(
                "{shown} answered GET / with {status}: {excerpt} (not a cluster's root: a path in the URL \
                 is a prefix of every request, is it right?)"
            )));
        }
    }
    let about: Value = serde_json::from_str(&text).unwrap_or_default();
    let version = &about["version"];
    let Some(number) = version["number"].as_str() else {
        return Err(ConnectorError::Fatal(format!(
            "{shown} answered GET / without a version.number, unlike Elasticsearch and OpenSearch: \
             is it one? ({excerpt})"
        )));
    };
    let product = match version["distribution"].as_str() {
        Some("opensearch") => "OpenSearch",
        _ => "Elasticsearch",
    };
    Ok(Server::Known(format!("{product} {number}")))
}

/// `ferry validate --check-connections`: the cluster answers, and an
/// existing index's mapping can hold the configured id field.
pub(crate) async fn check(config: &ElasticsearchSinkConfig) -> Result<(), ConnectorError> {
    let transport = transport(config)?;
    let shown = config.shown_urls();
    identify(&transport, &shown).await?;
    let template = IndexTemplate::parse(&config.index).map_err(ConnectorError::Fatal)?;
    if !template.is_static() {
        return Ok(());
    }
    let mapping = get(&transport, &shown, &format!("/{}/_mapping", config.index)).await?;
    if mapping.status_code().as_u16() == 404 {
        return Ok(());
    }
    let mapping: Value = mapping.json().await.map_err(|e| {
        ConnectorError::Fatal(format!("reading the mapping of {}: {e}", config.index))
    })?;
    if let IdSpec::Field { field } = &config.id {
        let ty = mapping
            .as_object()
            .and_then(|m| m.values().next())
            .and_then(|m| m["mappings"]["properties"][field.as_str()]["type"].as_str());
        if let Some(ty) = ty
            && matches!(ty, "object" | "nested" | "boolean" | "binary")
        {
            return Err(ConnectorError::Fatal(format!(
                "index {} maps `{field}` (the id field) as {ty}: ids come from strings or numbers",
                config.index
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Sink for ElasticsearchSink {
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        match identify(&self.transport, &self.shown).await? {
            Server::Known(server) => tracing::info!("elasticsearch: {server} at {}", self.shown),
            Server::Unsaid { status, hint } => tracing::warn!(
                "elasticsearch: {} answered GET / with {status} ({hint}); writing all the same",
                self.shown
            ),
        }
        Ok(None)
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        let now = now_ms();
        let mut rejected = Vec::new();
        let mut items = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            match self.item(r, now) {
                Ok(lines) => items.push((i, lines)),
                Err(why) => rejected.push(Rejected {
                    index: i,
                    error: ConnectorError::Fatal(why),
                }),
            }
        }
        let (max_actions, max_bytes) = (self.config.bulk.max_actions, self.config.bulk.max_bytes.0);
        let mut start = 0;
        while start < items.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < items.len()
                && end - start < max_actions
                && (end == start || bytes + items[end].1.len() <= max_bytes)
            {
                bytes += items[end].1.len();
                end += 1;
            }
            rejected.extend(self.write_request(&items[start..end], batch).await?);
            start = end;
        }
        rejected.sort_by_key(|r| r.index);
        Ok(rejected)
    }

    /// Every item that was answered 2xx is in the translog already.
    async fn commit(&mut self, _positions: &Positions) -> Result<(), ConnectorError> {
        Ok(())
    }
}
