//! The OpenAPI document (`GET /openapi.json`): the paths come from the
//! handlers' `#[utoipa::path]` annotations, collected by the same
//! registration that routes them (`utoipa_axum::routes!`), so a route
//! cannot be missing from the document; the shapes below describe the
//! JSON the handlers build, and a test holds every answer of a running
//! ferry against them (`tests/tests/openapi.rs`).

// Never built: they describe what the handlers build with `json!`.
#![allow(dead_code)]

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// Every error: what went wrong, in words.
#[derive(Serialize, ToSchema)]
pub(super) struct ErrorBody {
    error: String,
}

/// An operation taken (or done).
#[derive(Serialize, ToSchema)]
pub(super) struct Done {
    pipeline: String,
    ok: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum StateName {
    Starting,
    Running,
    Paused,
    Retrying,
    Failed,
    Stopped,
}

/// A pipeline's state, since when, and (retrying, failed) why.
#[derive(Serialize, ToSchema)]
struct PipelineState {
    name: StateName,
    /// RFC 3339.
    since: String,
    error: Option<String>,
    /// Retrying: when the next attempt starts (RFC 3339).
    next_attempt: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Rate {
    records_per_second: f64,
    bytes_per_second: f64,
}

/// Lag in source units: bytes (file), messages (Kafka), rows
/// (PostgreSQL), seconds (MongoDB change stream), records (generate).
#[derive(Serialize, ToSchema)]
struct Lag {
    amount: f64,
    unit: String,
    /// A lower bound or a guess, not a count.
    estimate: bool,
    /// At the current rate; null when nothing moves.
    eta_seconds: Option<f64>,
}

#[derive(Serialize, ToSchema)]
struct LastError {
    error: String,
    at: String,
}

/// A pipeline, as `GET /pipelines` lists it.
#[derive(Serialize, ToSchema)]
pub(super) struct Pipeline {
    name: String,
    file: String,
    state: PipelineState,
    /// Passwords and values from the environment masked.
    source: String,
    sink: String,
    /// Exactly-once or at-least-once, and why.
    delivery: String,
    records_in: u64,
    replayed: u64,
    records_out: u64,
    bytes_out: u64,
    dead_lettered: u64,
    /// Records a `filter` transform dropped (their positions committed).
    filtered: u64,
    retries: u64,
    restarts: u64,
    /// Over the last 10 seconds.
    rate: Rate,
    /// Summed over the partitions (null before a measurement, or when
    /// their units differ).
    lag: Option<Lag>,
    /// The committed positions, in words.
    committed: String,
    last_commit: Option<String>,
    last_error: Option<LastError>,
    /// How the pipeline ended, when it failed.
    error: Option<String>,
    /// The errors of its file, while the file is invalid (it runs on its
    /// previous definition meanwhile).
    pending_config_error: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct PartitionLag {
    amount: f64,
    unit: String,
    estimate: bool,
}

/// A partition: where it is committed, where it is read, its lag.
#[derive(Serialize, ToSchema)]
struct PartitionDetail {
    partition: String,
    label: Option<String>,
    /// The source's offset (opaque: a byte offset, a Kafka offset, a
    /// cursor, a resume token).
    committed: Option<Value>,
    read: Option<Value>,
    lag: Option<PartitionLag>,
    eta_seconds: Option<f64>,
}

#[derive(Serialize, ToSchema)]
struct Rates {
    #[serde(rename = "10s")]
    ten_seconds: Rate,
    #[serde(rename = "1m")]
    one_minute: Rate,
}

/// A pipeline by itself: the list's view and more.
#[derive(Serialize, ToSchema)]
pub(super) struct PipelineDetail {
    #[serde(flatten)]
    summary: Pipeline,
    rates: Rates,
    partitions: Vec<PartitionDetail>,
    lag_measured: Option<String>,
    lag_error: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Point {
    seconds_ago: f64,
    records_per_second: f64,
    bytes_per_second: f64,
}

/// One point a second over the last ten minutes, oldest first.
#[derive(Serialize, ToSchema)]
pub(super) struct History {
    pipeline: String,
    points: Vec<Point>,
}

/// A committed position.
#[derive(Serialize, ToSchema)]
struct Offset {
    partition: String,
    label: String,
    offset: Value,
}

/// The committed positions as the offset store keeps them (for a sink that
/// keeps its own, a copy).
#[derive(Serialize, ToSchema)]
pub(super) struct Offsets {
    pipeline: String,
    kept_by_sink: Option<bool>,
    /// Chosen by an operator (a reset or a PUT), not yet started from.
    reset: Option<bool>,
    updated: Option<String>,
    partitions: Vec<Offset>,
}

/// A position for one partition; `offset: null` reads it from its start.
#[derive(Serialize, ToSchema)]
struct ChosenOffset {
    /// A partition key as `GET .../offsets` lists it.
    partition: String,

    offset: Value,
    /// Ignored (what GET gives beside the key).
    label: Option<String>,
}

/// Positions for some partitions; the others keep theirs. What GET
/// answers may be sent back as it is, edited.
#[derive(Serialize, ToSchema)]
pub(super) struct OffsetsChoice {
    #[schema(min_items = 1)]
    partitions: Vec<ChosenOffset>,
}

/// `ready: true`, or the reasons it is not.
#[derive(Serialize, ToSchema)]
pub(super) struct Readiness {
    ready: bool,
    reasons: Option<Vec<String>>,
}

/// The document's head: what the API is, and its token scheme.
pub(super) fn document() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
    let mut info = utoipa::openapi::Info::new("ferry admin API", env!("CARGO_PKG_VERSION"));
    info.description = Some(
        "See and steer a running ferry: its pipelines' states, counters, rates, positions and \
         lag; pause, resume, restart; offsets reset and set; Prometheus metrics. Errors are \
         `{\"error\": \"...\"}`. With a token (`--api-token-file`, `FERRY_API_TOKEN`), every \
         endpoint but `/health` wants `Authorization: Bearer <token>`."
            .to_string(),
    );
    let mut document = utoipa::openapi::OpenApi::new(info, utoipa::openapi::Paths::new());
    let mut components = utoipa::openapi::Components::new();
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    document.components = Some(components);
    document
}

/// Every operation of `document` (those behind the token layer) may answer
/// 403 (a request a foreign page could have made) and, when ferry has a
/// token, wants it and may answer 401.
pub(super) fn wants_the_token(document: &mut utoipa::openapi::OpenApi, token: bool) {
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{RefOr, Response};
    let error = |description: &str| -> RefOr<Response> {
        let mut r = Response::new(description);
        r.content.insert(
            "application/json".to_string(),
            RefOr::T(utoipa::openapi::Content::new(Some(RefOr::Ref(
                utoipa::openapi::Ref::from_schema_name("ErrorBody"),
            )))),
        );
        RefOr::T(r)
    };
    for item in document.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut op.responses.responses;
            responses.insert(
                "403".into(),
                error("A request a page of another site could have made (Origin, Host)"),
            );
            if token {
                responses.insert("401".into(), error("No token, or a wrong one"));
                op.security = Some(vec![SecurityRequirement::new(
                    "token",
                    Vec::<String>::new(),
                )]);
            }
        }
    }
}
