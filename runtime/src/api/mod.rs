//! The admin API (axum, on 127.0.0.1:8083 by default): every pipeline's
//! state, counters, rates and positions (`pipelines.rs`), pause / resume /
//! restart / offsets reset of a running ferry (`steer.rs`), Prometheus
//! metrics (`metrics.rs`), and a status page at `/` (`page.rs`).
//!
//! The run loop owns the pipelines; a handler asks it through a channel
//! ([`FleetRequest`]) for what it needs and does any waiting itself, so a
//! slow drain never holds up the loop.
//!
//! With a token (`--api-token-file`, `FERRY_API_TOKEN`) every endpoint but
//! `/health` wants `Authorization: Bearer <token>`; without one the API
//! listens on loopback addresses only.

pub mod client;
mod doc;
mod listen;
mod metrics;
mod offsets;
mod page;
mod pipelines;
mod steer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::PipelineConfig;
use crate::engine::Stats;
use crate::offsets::OffsetStore;
use crate::supervisor::{PipelineHandle, Snapshot};

/// What a handler asks the run loop.
pub(crate) enum FleetRequest {
    /// Every pipeline, as the operator sees it.
    List(oneshot::Sender<Vec<PipelineView>>),
    /// The steering end of a pipeline that runs (not one that has ended).
    Live(String, oneshot::Sender<Lookup>),
    /// Start again a pipeline that has ended (failed or stopped); a live
    /// one is restarted through its supervisor.
    Restart(String, oneshot::Sender<Lookup>),
    /// A pipeline with the definition it runs on (None: no such pipeline).
    Definition(
        String,
        oneshot::Sender<(Lookup, Option<Arc<PipelineConfig>>)>,
    ),
}

/// A pipeline by name: running, ended, or unknown.
pub(crate) enum Lookup {
    Live(PipelineHandle),
    Ended,
    Unknown,
}

/// One pipeline, as the API shows it.
pub(crate) struct PipelineView {
    pub snapshot: Snapshot,
    pub stats: Arc<Stats>,
    pub file: String,
    pub source: String,
    pub sink: String,
    pub guarantee: String,
    pub error: Option<String>,
    pub pending_config_error: Option<String>,
}

/// What the API needs to serve.
pub(crate) struct ApiConfig {
    pub store: OffsetStore,
    /// The data folder (what a pipeline's connectors are built with).
    pub data_dir: std::path::PathBuf,
    /// How long a reset waits for its pipeline to pause.
    pub drain_timeout: Duration,
    /// Every endpoint but `/health` wants it, when set.
    pub token: Option<String>,
}

#[derive(Clone)]
struct Api {
    fleet: mpsc::Sender<FleetRequest>,
    store: OffsetStore,
    data_dir: Arc<std::path::Path>,
    drain_timeout: Duration,
    token: Option<Arc<str>>,
    /// One operation on a pipeline at a time (`steer.rs`). A std mutex:
    /// held only to find a pipeline's lock, never across an await.
    steering: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Refused requests are logged at most once a second of each kind. A
    /// std mutex: never held across an await.
    refusals: Arc<std::sync::Mutex<std::collections::HashMap<&'static str, listen::Throttle>>>,
}

/// Serves the API on `listener` until the fleet's end of the channel
/// closes (the run has ended).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    fleet: mpsc::Sender<FleetRequest>,
    config: ApiConfig,
) {
    let closed = fleet.clone();
    let api = Api {
        fleet,
        store: config.store,
        data_dir: config.data_dir.into(),
        drain_timeout: config.drain_timeout,
        token: config.token.map(Arc::from),
        steering: Arc::default(),
        refusals: Arc::default(),
    };
    let (api_routes, mut document) = OpenApiRouter::with_openapi(doc::document())
        .routes(routes!(pipelines::ready))
        .routes(routes!(metrics::metrics))
        .routes(routes!(pipelines::list))
        .routes(routes!(pipelines::one))
        .routes(routes!(pipelines::history))
        .routes(routes!(steer::pause))
        .routes(routes!(steer::resume))
        .routes(routes!(steer::restart))
        .routes(routes!(
            pipelines::offsets,
            offsets::reset_offsets,
            offsets::set_offsets
        ))
        .split_for_parts();
    doc::wants_the_token(&mut document, api.token.is_some());
    let (open_routes, open_document) = OpenApiRouter::new()
        .routes(routes!(health))
        .split_for_parts();
    document.merge(open_document);
    let document = Arc::new(document);
    let app = api_routes
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(no_such_method)
        .route_layer(middleware::from_fn_with_state(api.clone(), authorized))
        // After the layer: answered without a token (a load balancer's
        // probe; the page, which holds no data and asks for the token; the
        // API's description).
        .merge(open_routes)
        .route(
            "/openapi.json",
            get(move || async move { Json(document.clone()) }),
        )
        .route("/", get(page::index))
        .route("/page/app.js", get(page::script))
        .route("/page/style.css", get(page::style))
        .layer(middleware::map_response(errors_in_json))
        .with_state(api);
    listen::serve(listener, app, async move { closed.closed().await }).await;
}

/// An error axum answers by itself (a path it cannot decode, say) in
/// plain text, as JSON like every other error.
async fn errors_in_json(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/plain"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let error = String::from_utf8_lossy(&text).trim().to_string();
    let mut json = answer(parts.status, json!({"error": error})).into_response();
    *json.headers_mut() = {
        let mut headers = parts.headers;
        headers.remove(axum::http::header::CONTENT_LENGTH);
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        headers
    };
    json
}

/// Binds the API's address. Without a token, an address that is not
/// loopback is refused: anyone who reaches it could pause pipelines.
pub async fn bind(addr: SocketAddr, token: bool) -> std::io::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() && !token {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the admin API listens on {addr}, beyond this machine, only with a token (--api-token-file FILE or FERRY_API_TOKEN)"
            ),
        ));
    }
    tokio::net::TcpListener::bind(addr).await
}

/// Lets a request through when no token is set or it carries the token;
/// else 401, logged without what it carried.
async fn authorized(
    AxumState(api): AxumState<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let path: String = request.uri().path().chars().take(200).collect();
    let method = request.method().clone();
    let log_refusal = |kind: &'static str, what: &str| {
        let allowed = api
            .refusals
            .lock()
            .expect("not poisoned")
            .entry(kind)
            .or_default()
            .allow();
        if let Some(more) = allowed {
            tracing::warn!("admin API: {method} {path} from {peer} refused: {what}{more}");
        }
    };
    if let Some(why) = cross_site(&request, api.token.is_some()) {
        log_refusal("cross-site", &why);
        return answer(StatusCode::FORBIDDEN, json!({"error": why})).into_response();
    }
    let Some(token) = &api.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let what = if given.is_some() {
        "a wrong token"
    } else {
        "no token"
    };
    log_refusal(what, what);
    let mut refused = answer(
        StatusCode::UNAUTHORIZED,
        json!({"error": "this ferry's admin API wants `Authorization: Bearer <token>`"}),
    )
    .into_response();
    refused.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    refused
}

/// Why a request that a web page of another site could have made is
/// refused, if it is one: an `Origin` other than this API's own (a page
/// elsewhere posting to it: CSRF), or, without a token, a `Host` that is a
/// name other than `localhost` (a name of another site rebound to this
/// machine's address: DNS rebinding). Tools (curl, ferry's CLI, Prometheus)
/// send no `Origin` and the address as `Host`.
fn cross_site(request: &Request, token: bool) -> Option<String> {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(axum::http::header::HOST);
    if let Some(origin) = header(axum::http::header::ORIGIN) {
        let own = host.is_some_and(|h| origin == format!("http://{h}"));
        if !own {
            return Some(format!(
                "a request from a page of {origin} (only this API's own page may steer it)"
            ));
        }
    }
    let name = host.map(|h| match h.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => h,
    });
    let local = name.is_none_or(|n| {
        n.eq_ignore_ascii_case("localhost")
            || n.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok()
    });
    (!token && !local).then(|| {
        format!(
            "Host {:?} is not an address of this machine (without a token, the API answers requests to its address or localhost)",
            host.unwrap_or_default()
        )
    })
}

/// Compares in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// 200 while the process runs; never wants the token.
#[utoipa::path(get, path = "/health", security(()), responses(
    (status = 200, description = "ferry runs", content_type = "text/plain", body = String),
))]
async fn health() -> &'static str {
    "ok\n"
}

async fn no_such_endpoint(request: Request) -> Reply {
    answer(
        StatusCode::NOT_FOUND,
        json!({"error": format!("no such endpoint: {} {}", request.method(), request.uri().path())}),
    )
}

async fn no_such_method(request: Request) -> Reply {
    answer(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": format!("{} is not an operation of {}", request.method(), request.uri().path())}),
    )
}

type Reply = (StatusCode, Json<Value>);

/// Every answer passes here: values from the environment are masked in it
/// as in the log (`crate::redact`), whoever wrote the error it quotes.
fn answer(status: StatusCode, mut body: Value) -> Reply {
    mask(&mut body);
    (status, Json(body))
}

fn mask(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(masked) = crate::redact::redact(s) {
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        Value::Object(map) => map.values_mut().for_each(mask),
        _ => {}
    }
}

fn gone() -> Reply {
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "ferry is stopping"}),
    )
}

async fn ask<T>(api: &Api, make: impl FnOnce(oneshot::Sender<T>) -> FleetRequest) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    api.fleet.send(make(tx)).await.ok()?;
    rx.await.ok()
}

fn unknown(name: &str) -> Reply {
    answer(
        StatusCode::NOT_FOUND,
        json!({"error": format!("no pipeline named {name:?}")}),
    )
}

fn ended(name: &str, what: &str) -> Reply {
    answer(
        StatusCode::CONFLICT,
        json!({"error": format!("pipeline {name:?} has ended (failed or stopped): restart it to {what} it")}),
    )
}
