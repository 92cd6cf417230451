//! The admin API (axum, on 127.0.0.1:8083 by default): every pipeline's
//! state, and pause / resume / restart / offsets reset of a running ferry.
//!
//! The run loop owns the pipelines; a handler asks it through a channel
//! ([`FleetRequest`]) for what it needs and does any waiting itself, so a
//! slow drain never holds up the loop.

pub mod client;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::offsets::OffsetStore;
use crate::supervisor::{Command, PipelineHandle, Snapshot, State};

/// What a handler asks the run loop.
pub(crate) enum FleetRequest {
    /// Every pipeline, as the operator sees it.
    List(oneshot::Sender<Vec<PipelineView>>),
    /// The steering end of a pipeline that runs (not one that has ended).
    Live(String, oneshot::Sender<Lookup>),
    /// Start again a pipeline that has ended (failed or stopped); a live
    /// one is restarted through its supervisor.
    Restart(String, oneshot::Sender<Lookup>),
}

/// A pipeline by name: running, ended, or unknown.
pub(crate) enum Lookup {
    Live(PipelineHandle),
    Ended,
    Unknown,
}

/// One pipeline, as `GET /pipelines` shows it.
pub(crate) struct PipelineView {
    pub snapshot: Snapshot,
    pub file: String,
    pub source: String,
    pub sink: String,
    pub guarantee: String,
    pub error: Option<String>,
    pub pending_config_error: Option<String>,
}

#[derive(Clone)]
struct Api {
    fleet: mpsc::Sender<FleetRequest>,
    store: OffsetStore,
    /// How long a reset waits for its pipeline to pause.
    drain_timeout: Duration,
}

/// Serves the API on `listener` until the fleet's end of the channel
/// closes (the run has ended).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    fleet: mpsc::Sender<FleetRequest>,
    store: OffsetStore,
    drain_timeout: Duration,
) {
    let closed = fleet.clone();
    let api = Api {
        fleet,
        store,
        drain_timeout,
    };
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/pipelines", get(list))
        .route("/pipelines/{name}", get(one))
        .route("/pipelines/{name}/pause", post(pause))
        .route("/pipelines/{name}/resume", post(resume))
        .route("/pipelines/{name}/restart", post(restart))
        .route("/pipelines/{name}/offsets", delete(reset_offsets))
        .with_state(api);
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        closed.closed().await;
    });
    if let Err(e) = served.await {
        tracing::error!("the admin API stopped: {e}");
    }
}

/// Binds the API's address; an address that is not loopback is refused
/// (there is no authentication yet).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the admin API has no authentication yet: it listens on loopback addresses only, not {addr}"
            ),
        ));
    }
    tokio::net::TcpListener::bind(addr).await
}

type Reply = (StatusCode, Json<Value>);

fn answer(status: StatusCode, body: Value) -> Reply {
    (status, Json(body))
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

async fn list(AxumState(api): AxumState<Api>) -> Reply {
    match ask(&api, FleetRequest::List).await {
        Some(views) => answer(
            StatusCode::OK,
            Value::Array(views.iter().map(view_json).collect()),
        ),
        None => gone(),
    }
}

async fn one(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let Some(views) = ask(&api, FleetRequest::List).await else {
        return gone();
    };
    match views.iter().find(|v| v.snapshot.name == name) {
        Some(v) => answer(StatusCode::OK, view_json(v)),
        None => unknown(&name),
    }
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

/// Sends `command` to the live pipeline `name`.
async fn steer(api: &Api, name: &str, command: Command, done: &str) -> Reply {
    match ask(api, |tx| FleetRequest::Live(name.to_string(), tx)).await {
        Some(Lookup::Live(handle)) => {
            handle.send(command).await;
            tracing::info!(pipeline = %name, "admin API: {done}");
            answer(StatusCode::ACCEPTED, json!({"pipeline": name, "ok": done}))
        }
        Some(Lookup::Ended) => ended(name, "steer"),
        Some(Lookup::Unknown) => unknown(name),
        None => gone(),
    }
}

async fn pause(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let done = "pausing: what it read is written and committed, then nothing is read";
    steer(&api, &name, Command::Pause, done).await
}

async fn resume(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let done = "resuming from the committed positions";
    steer(&api, &name, Command::Resume, done).await
}

async fn restart(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    match ask(&api, |tx| FleetRequest::Restart(name.clone(), tx)).await {
        Some(Lookup::Live(handle)) => {
            handle.send(Command::Restart).await;
            tracing::info!(pipeline = %name, "admin API: restarting from the committed positions");
            answer(
                StatusCode::ACCEPTED,
                json!({"pipeline": name, "ok": "restarting from the committed positions"}),
            )
        }
        Some(Lookup::Ended) => {
            tracing::info!(pipeline = %name, "admin API: started again from the committed positions");
            answer(
                StatusCode::ACCEPTED,
                json!({"pipeline": name, "ok": "started again from the committed positions"}),
            )
        }
        Some(Lookup::Unknown) => unknown(&name),
        None => gone(),
    }
}

/// Pause, reset, resume: one operation. A pipeline paused before stays
/// paused after.
async fn reset_offsets(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let handle = match ask(&api, |tx| FleetRequest::Live(name.clone(), tx)).await {
        Some(Lookup::Live(handle)) => handle,
        Some(Lookup::Ended) => return ended(&name, "reset"),
        Some(Lookup::Unknown) => return unknown(&name),
        None => return gone(),
    };
    let was_paused = handle.snapshot().status.state == State::Paused;
    handle.send(Command::Pause).await;
    let mut status = handle.watch();
    // The watch's guard is not held past this statement (it is not Send).
    let paused = tokio::time::timeout(
        api.drain_timeout,
        status.wait_for(|s| s.state == State::Paused || s.state.is_final()),
    )
    .await
    .map(|seen| seen.is_ok_and(|s| s.state == State::Paused));
    match paused {
        Ok(true) => {}
        Ok(false) => return ended(&name, "reset"),
        Err(_) => {
            return answer(
                StatusCode::GATEWAY_TIMEOUT,
                json!({"error": format!("pipeline {name:?} did not pause within {}; nothing was reset", humantime::format_duration(api.drain_timeout))}),
            );
        }
    }
    let store = api.store.clone();
    let pipeline = name.clone();
    let reset = tokio::task::spawn_blocking(move || store.reset(&pipeline)).await;
    let outcome = match reset {
        Ok(Ok(true)) => Ok("offsets reset: its source is read again from the beginning"),
        Ok(Ok(false)) => Ok("nothing was committed yet: it starts from the beginning anyway"),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(crate::join_error_message(e)),
    };
    if !was_paused {
        handle.send(Command::Resume).await;
    }
    match outcome {
        Ok(done) => {
            tracing::info!(pipeline = %name, "admin API: {done}");
            answer(StatusCode::OK, json!({"pipeline": name, "ok": done}))
        }
        Err(e) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": format!("resetting the offsets of {name:?}: {e}")}),
        ),
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn view_json(v: &PipelineView) -> Value {
    let s = &v.snapshot;
    let mut state = json!({"name": s.status.state.name(), "since": time(s.status.since)});
    match &s.status.state {
        State::Retrying {
            error,
            next_attempt,
        } => {
            state["error"] = json!(error);
            state["next_attempt"] = json!(time(*next_attempt));
        }
        State::Failed { error } => state["error"] = json!(error),
        _ => {}
    }
    json!({
        "name": s.name,
        "file": v.file,
        "state": state,
        "source": v.source,
        "sink": v.sink,
        "delivery": v.guarantee,
        "records_in": s.records_in,
        "replayed": s.replayed,
        "records_out": s.records_out,
        "dead_lettered": s.dead_lettered,
        "retries": s.retries,
        "restarts": s.status.restarts,
        "committed": s.committed,
        "last_commit": s.last_commit.map(time),
        "last_error": s.status.last_error.as_ref().map(|e| json!({"error": e.error, "at": time(e.at)})),
        "error": v.error,
        "pending_config_error": v.pending_config_error,
    })
}
