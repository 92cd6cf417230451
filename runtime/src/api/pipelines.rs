//! What the pipelines are doing: `GET /pipelines[/{name}]`, their
//! history and offsets, and `/ready`.

use std::time::SystemTime;

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Api, FleetRequest, PipelineView, Reply, answer, ask, doc, gone, unknown};
use crate::supervisor::State;

/// Every pipeline.
#[utoipa::path(get, path = "/pipelines", responses(
    (status = 200, description = "Every pipeline", body = [doc::Pipeline]),
    (status = 503, description = "ferry is stopping", body = doc::ErrorBody),
))]
pub(super) async fn list(AxumState(api): AxumState<Api>) -> Reply {
    match ask(&api, FleetRequest::List).await {
        Some(views) => answer(
            StatusCode::OK,
            Value::Array(views.iter().map(view_json).collect()),
        ),
        None => gone(),
    }
}

/// The pipeline `name`, or the reply to give when there is none.
async fn find(api: &Api, name: &str) -> Result<PipelineView, Reply> {
    let views = ask(api, FleetRequest::List).await.ok_or_else(gone)?;
    views
        .into_iter()
        .find(|v| v.snapshot.name == name)
        .ok_or_else(|| unknown(name))
}

/// A pipeline: counters, rates, partitions with their positions and lag.
#[utoipa::path(get, path = "/pipelines/{name}", params(("name" = String, Path, description = "A pipeline's name")), responses(
    (status = 200, description = "The pipeline", body = doc::PipelineDetail),
    (status = 404, description = "No such pipeline", body = doc::ErrorBody),
    (status = 503, description = "ferry is stopping", body = doc::ErrorBody),
))]
pub(super) async fn one(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    match find(&api, &name).await {
        Ok(v) => answer(StatusCode::OK, detail_json(&v)),
        Err(reply) => reply,
    }
}

/// Records and bytes per second, one value a second, oldest first: what
/// the status page plots.
#[utoipa::path(get, path = "/pipelines/{name}/history", params(("name" = String, Path, description = "A pipeline's name")), responses(
    (status = 200, description = "Rates a second, oldest first", body = doc::History),
    (status = 404, description = "No such pipeline", body = doc::ErrorBody),
    (status = 503, description = "ferry is stopping", body = doc::ErrorBody),
))]
pub(super) async fn history(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let v = match find(&api, &name).await {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let samples = v.stats.history();
    let now = std::time::Instant::now();
    let points: Vec<Value> = samples
        .windows(2)
        .map(|w| {
            let secs = w[1].at.duration_since(w[0].at).as_secs_f64().max(1e-3);
            json!({
                "seconds_ago": now.duration_since(w[1].at).as_secs_f64(),
                "records_per_second": w[1].records_out.saturating_sub(w[0].records_out) as f64 / secs,
                "bytes_per_second": w[1].bytes_out.saturating_sub(w[0].bytes_out) as f64 / secs,
            })
        })
        .collect();
    answer(StatusCode::OK, json!({"pipeline": name, "points": points}))
}

/// The committed positions as the offset store keeps them (a copy, for a
/// sink that keeps its own).
#[utoipa::path(get, path = "/pipelines/{name}/offsets", params(("name" = String, Path, description = "A pipeline's name")), responses(
    (status = 200, description = "The committed positions", body = doc::Offsets),
    (status = 404, description = "No such pipeline", body = doc::ErrorBody),
    (status = 500, description = "The offset store could not be read", body = doc::ErrorBody),
    (status = 503, description = "ferry is stopping", body = doc::ErrorBody),
))]
pub(super) async fn offsets(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    if let Err(reply) = find(&api, &name).await {
        return reply;
    }
    let store = api.store.clone();
    let pipeline = name.clone();
    let loaded = tokio::task::spawn_blocking(move || store.load(&pipeline)).await;
    let stored = match loaded {
        Ok(Ok(stored)) => stored,
        Ok(Err(e)) => return failed(&name, &e.to_string()),
        Err(e) => return failed(&name, &crate::join_error_message(e)),
    };
    let body = match stored {
        Some(s) => json!({
            "pipeline": name,
            "kept_by_sink": s.kept_by_sink,
            "reset": s.reset,
            "updated": s.updated,
            "partitions": s.positions.iter().map(|p| json!({
                "partition": p.partition.key,
                "label": p.partition.label(),
                "offset": p.offset,
            })).collect::<Vec<_>>(),
        }),
        None => json!({"pipeline": name, "partitions": []}),
    };
    answer(StatusCode::OK, body)
}

fn failed(name: &str, error: &str) -> Reply {
    answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": format!("reading the offsets of {name:?}: {error}")}),
    )
}

/// 200 when no pipeline is failed or starting; else 503 with the reasons.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "No pipeline is failed or starting", body = doc::Readiness),
    (status = 503, description = "The pipelines failed or starting, with why", body = doc::Readiness),
))]
pub(super) async fn ready(AxumState(api): AxumState<Api>) -> Reply {
    let Some(views) = ask(&api, FleetRequest::List).await else {
        return gone();
    };
    let reasons: Vec<String> = views
        .iter()
        .filter_map(|v| match &v.snapshot.status.state {
            State::Starting => Some(format!("{}: starting", v.snapshot.name)),
            State::Failed { error } => Some(format!("{}: failed: {error}", v.snapshot.name)),
            _ => None,
        })
        .collect();
    if reasons.is_empty() {
        answer(StatusCode::OK, json!({"ready": true}))
    } else {
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "reasons": reasons}),
        )
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn state_json(v: &PipelineView) -> Value {
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
    state
}

fn rate_json(rate: crate::engine::Rate) -> Value {
    json!({"records_per_second": rate.records, "bytes_per_second": rate.bytes})
}

/// A pipeline in the list.
fn view_json(v: &PipelineView) -> Value {
    let s = &v.snapshot;
    json!({
        "name": s.name,
        "file": v.file,
        "state": state_json(v),
        "source": v.source,
        "sink": v.sink,
        "delivery": v.guarantee,
        "records_in": s.records_in,
        "replayed": s.replayed,
        "records_out": s.records_out,
        "bytes_out": v.stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
        "dead_lettered": s.dead_lettered,
        "filtered": s.filtered,
        "retries": s.retries,
        "restarts": s.status.restarts,
        "rate": rate_json(v.stats.rate(10)),
        "lag": lag_total(v),
        "committed": s.committed,
        "last_commit": s.last_commit.map(time),
        "last_error": s.status.last_error.as_ref().map(|e| json!({"error": e.error, "at": time(e.at)})),
        "error": v.error,
        "pending_config_error": v.pending_config_error,
    })
}

/// A pipeline by itself: the list's view, its rates over two windows and
/// each partition's committed and read positions.
fn detail_json(v: &PipelineView) -> Value {
    let mut out = view_json(v);
    out["rates"] = json!({
        "10s": rate_json(v.stats.rate(10)),
        "1m": rate_json(v.stats.rate(60)),
    });
    let read = v.stats.read_positions();
    let committed = v.stats.committed_positions();
    let lag = v.stats.lag();
    let lags = lag.as_ref().map_or(&[][..], |l| &l.partitions[..]);
    let mut keys: Vec<&str> = read.iter().map(|p| p.partition.key.as_str()).collect();
    keys.extend(committed.iter().map(|p| p.partition.key.as_str()));
    keys.extend(lags.iter().map(|l| l.lag.partition.as_str()));
    keys.sort_unstable();
    keys.dedup();
    let partitions: Vec<Value> = keys
        .iter()
        .map(|key| {
            let c = committed.get(key);
            let r = read.get(key);
            let l = lags.iter().find(|l| l.lag.partition == *key);
            let label = c
                .or(r)
                .map(|p| p.partition.label().to_string())
                .or(l.map(|l| l.lag.label.clone()));
            json!({
                "partition": key,
                "label": label,
                "committed": c.map(|p| p.offset.clone()),
                "read": r.map(|p| p.offset.clone()),
                "lag": l.map(|l| json!({"amount": l.lag.amount, "unit": l.lag.unit, "estimate": l.lag.estimate})),
                "eta_seconds": l.and_then(|l| l.eta_seconds),
            })
        })
        .collect();
    out["partitions"] = json!(partitions);
    out["lag_measured"] = json!(lag.as_ref().map(|l| time(l.at)));
    out["lag_error"] = json!(lag.and_then(|l| l.error));
    out
}

/// The pipeline's lag over its partitions, when it was measured (and the
/// partitions agree on the unit); its ETA is that of the slowest.
fn lag_total(v: &PipelineView) -> Value {
    let Some(report) = v.stats.lag() else {
        return Value::Null;
    };
    let Some(first) = report.partitions.first() else {
        return Value::Null;
    };
    let unit = first.lag.unit;
    if report.partitions.iter().any(|p| p.lag.unit != unit) {
        return Value::Null;
    }
    let amount: f64 = report.partitions.iter().map(|p| p.lag.amount).sum();
    let estimate = report.partitions.iter().any(|p| p.lag.estimate);
    let eta = report
        .partitions
        .iter()
        .filter(|p| p.lag.amount > 0.0)
        .map(|p| p.eta_seconds)
        .try_fold(0.0f64, |worst, e| e.map(|e| worst.max(e)));
    json!({"amount": amount, "unit": unit, "estimate": estimate, "eta_seconds": eta})
}
