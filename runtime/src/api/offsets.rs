//! A running pipeline's offsets moved by its operator: reset (DELETE) and
//! positions for some partitions (PUT, as Kafka Connect's KIP-875 allows).
//! Both pause the pipeline around the change, so that it cannot race the
//! pipeline's own commits, and resume it after (unless it was paused
//! before). The next start takes the chosen positions, whatever the sink
//! holds (`engine/resume.rs`).

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use ferry_api::{ConnectorError, Positions, Value};
use serde::Deserialize;
use serde_json::json;

use super::steer::{offer, one_at_a_time};
use super::{Api, FleetRequest, Lookup, Reply, answer, ask, doc, gone, unknown};
use crate::config::PipelineConfig;
use crate::supervisor::{Command, PipelineHandle, State};

/// Pause, reset, resume: one operation. A pipeline paused before stays
/// paused after.
#[utoipa::path(delete, path = "/pipelines/{name}/offsets", params(("name" = String, Path, description = "A pipeline's name")), responses(
    (status = 200, description = "Reset: read again from the start of the source", body = doc::Done),
    (status = 404, description = "No such pipeline", body = doc::ErrorBody),
    (status = 409, description = "Another operation is under way, or the pipeline cannot take it now", body = doc::ErrorBody),
    (status = 500, description = "The offset store could not be written", body = doc::ErrorBody),
    (status = 504, description = "The pipeline did not pause in time; nothing changed", body = doc::ErrorBody),
))]
pub(super) async fn reset_offsets(
    AxumState(api): AxumState<Api>,
    Path(name): Path<String>,
) -> Reply {
    let _one = match one_at_a_time(&api, &name) {
        Ok(guard) => guard,
        Err(reply) => return reply,
    };
    let (target, _) = match find(&api, &name).await {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let store = api.store.clone();
    let pipeline = name.clone();
    while_paused(&api, target, &name, "reset", async move {
        let reset = tokio::task::spawn_blocking(move || store.reset(&pipeline)).await;
        match reset {
            Ok(Ok(true)) => Ok("offsets reset: its source is read again from the beginning".into()),
            Ok(Ok(false)) => {
                Ok("nothing was committed yet: it starts from the beginning anyway".into())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(crate::join_error_message(e)),
        }
    })
    .await
}

/// `PUT /pipelines/{name}/offsets`: the body GET gives, or only its
/// `partitions`, each `{"partition": KEY, "offset": OFFSET}`; an offset
/// `null` reads that partition from its start. Every position is checked
/// by the source first; one refused refuses all, and nothing changes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Choice {
    partitions: Vec<Chosen>,
    // What GET answers beside them, so that its answer can be sent back.
    #[serde(default, rename = "pipeline")]
    _pipeline: Option<Value>,
    #[serde(default, rename = "kept_by_sink")]
    _kept_by_sink: Option<Value>,
    #[serde(default, rename = "reset")]
    _reset: Option<Value>,
    #[serde(default, rename = "updated")]
    _updated: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Chosen {
    partition: String,
    offset: Value,
    #[serde(default, rename = "label")]
    _label: Option<Value>,
}

#[utoipa::path(put, path = "/pipelines/{name}/offsets", params(("name" = String, Path, description = "A pipeline's name")),
    request_body(content = doc::OffsetsChoice, content_type = "application/json"),
    responses(
    (status = 200, description = "Set: the pipeline resumes from them", body = doc::Done),
    (status = 400, description = "Not positions the source can resume from (each named); nothing changed", body = doc::ErrorBody),
    (status = 408, description = "The body did not arrive within 10 s", body = doc::ErrorBody),
    (status = 413, description = "The body is larger than 1 MiB", body = doc::ErrorBody),
    (status = 404, description = "No such pipeline", body = doc::ErrorBody),
    (status = 409, description = "Another operation is under way, or the pipeline cannot take it now", body = doc::ErrorBody),
    (status = 500, description = "The offset store could not be written", body = doc::ErrorBody),
    (status = 504, description = "The pipeline did not pause in time; nothing changed", body = doc::ErrorBody),
    (status = 503, description = "The positions could not be checked (a server down), or ferry is stopping", body = doc::ErrorBody),
))]
pub(super) async fn set_offsets(
    AxumState(api): AxumState<Api>,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let (target, config) = match find(&api, &name).await {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    // A client that sends its body slowly holds one of the API's few
    // connections: it has as long as a request head has.
    let body = match tokio::time::timeout(BODY_TIMEOUT, to_bytes(body, MAX_BODY)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("the body could not be read (at most {MAX_BODY} bytes): {e}")}),
            );
        }
        Err(_) => {
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs())}),
            );
        }
    };
    let choice = match parse(&body) {
        Ok(choice) => choice,
        Err(why) => return refused(&name, &[why]),
    };
    let _one = match one_at_a_time(&api, &name) {
        Ok(guard) => guard,
        Err(reply) => return reply,
    };
    let committed = match load(&api, &name).await {
        Ok(positions) => positions,
        Err(e) => return failed(&name, &e),
    };
    // Checked before the pause: a refusal leaves the pipeline alone.
    let checked = match check(&api, &config, &choice, &committed).await {
        Ok(checked) => checked,
        Err(reply) => return reply,
    };
    let (api2, pipeline) = (api.clone(), name.clone());
    let named = choice.partitions.len();
    while_paused(&api, target, &name, "moved", async move {
        // What it committed while it paused, moved as asked.
        let mut positions = load(&api2, &pipeline).await?;
        for (key, position) in checked {
            match position {
                Some(p) => positions.advance(&p),
                None => {
                    positions.remove(&key);
                }
            }
        }
        let store = api2.store.clone();

        tokio::task::spawn_blocking(move || store.choose(&pipeline, positions))
            .await
            .map_err(crate::join_error_message)?
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "offsets set for {named} partition(s): it resumes from them"
        ))
    })
    .await
}

fn parse(body: &[u8]) -> Result<Choice, String> {
    let choice: Choice = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body is not {{\"partitions\": [{{\"partition\": KEY, \"offset\": OFFSET}}, …]}}: {e}"
        )
    })?;
    if choice.partitions.is_empty() {
        return Err("no partitions given".to_string());
    }
    let mut seen = std::collections::HashSet::new();
    for c in &choice.partitions {
        if !seen.insert(&c.partition) {
            return Err(format!("partition {:?} is given twice", c.partition));
        }
    }
    Ok(choice)
}

/// Each chosen partition as the source would resume it (None: from its
/// start), or the refusals, all at once.
async fn check(
    api: &Api,
    config: &PipelineConfig,
    choice: &Choice,
    committed: &Positions,
) -> Result<Vec<(String, Option<ferry_api::Position>)>, Reply> {
    let ctx = crate::lag::context(config, &api.data_dir);
    let (mut checked, mut refusals, mut unchecked) = (Vec::new(), Vec::new(), Vec::new());
    for c in &choice.partitions {
        if c.offset.is_null() {
            match committed.get(&c.partition) {
                Some(_) => checked.push((c.partition.clone(), None)),
                None => refusals.push(format!(
                    "{:?}: not a partition this pipeline has committed (GET .../offsets lists them)",
                    c.partition
                )),
            }
            continue;
        }
        let asked =
            config
                .source
                .resume_point(&ctx, &c.partition, &c.offset, committed.get(&c.partition));
        match tokio::time::timeout(CHECK_TIMEOUT, asked).await {
            Ok(Ok(p)) => checked.push((c.partition.clone(), Some(p))),
            Ok(Err(ConnectorError::Fatal(why))) => {
                refusals.push(format!("{:?}: {why}", c.partition))
            }
            Ok(Err(e)) => unchecked.push(format!("{:?}: {e}", c.partition)),
            Err(_) => unchecked.push(format!(
                "{:?}: no answer within {}s",
                c.partition,
                CHECK_TIMEOUT.as_secs()
            )),
        }
    }
    if !refusals.is_empty() {
        return Err(refused(&config.name, &refusals));
    }
    if !unchecked.is_empty() {
        return Err(answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!("the positions for {:?} could not be checked, nothing was changed: {}", config.name, unchecked.join("; "))}),
        ));
    }
    Ok(checked)
}

/// The largest body a PUT takes, and how long it may take to arrive.
const MAX_BODY: usize = 1 << 20;
const BODY_TIMEOUT: std::time::Duration = super::listen::HEAD_TIMEOUT;

/// The longest the source may take to check one position.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

fn refused(name: &str, why: &[String]) -> Reply {
    answer(
        StatusCode::BAD_REQUEST,
        json!({"error": format!("offsets for {name:?} refused, nothing was changed: {}", why.join("; "))}),
    )
}

/// A pipeline whose offsets are changed: while it runs, around a pause;
/// once it has ended (failed on a position, say), at once.
enum Target {
    Running(PipelineHandle),
    Ended,
}

/// The pipeline `name`, with its definition (one question to the fleet).
async fn find(api: &Api, name: &str) -> Result<(Target, Arc<PipelineConfig>), Reply> {
    match ask(api, |tx| FleetRequest::Definition(name.to_string(), tx)).await {
        Some((Lookup::Live(handle), Some(config))) => Ok((Target::Running(handle), config)),
        Some((Lookup::Ended, Some(config))) => Ok((Target::Ended, config)),
        Some(_) => Err(unknown(name)),
        None => Err(gone()),
    }
}

/// The positions the store holds for `name` (for a sink that keeps its
/// own, the store's copy, current once the pipeline is paused).
async fn load(api: &Api, name: &str) -> Result<Positions, String> {
    let (store, pipeline) = (api.store.clone(), name.to_string());
    let loaded = tokio::task::spawn_blocking(move || store.load(&pipeline))
        .await
        .map_err(crate::join_error_message)?
        .map_err(|e| e.to_string())?;
    Ok(loaded.map(|s| s.positions).unwrap_or_default())
}

fn failed(name: &str, error: &str) -> Reply {
    answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": format!("the offsets of {name:?}: {error}")}),
    )
}

/// Runs `change` with the pipeline paused: pauses it first and resumes it
/// after, unless it was paused before; an ended pipeline is changed as it
/// is. `done` names the change for the timeout's message.
async fn while_paused(
    api: &Api,
    target: Target,
    name: &str,
    done: &str,
    change: impl Future<Output = Result<String, String>>,
) -> Reply {
    // The pipeline to resume after, if it runs (and was not paused before).
    let mut resume = None;
    let mut running = false;
    if let Target::Running(handle) = target {
        let was_paused = handle.snapshot().status.state == State::Paused;
        if let Err(reply) = offer(&handle, name, Command::Pause) {
            return reply;
        }
        let mut status = handle.watch();
        // The watch's guard is not held past this statement (it is not Send).
        let paused = tokio::time::timeout(
            api.drain_timeout,
            status.wait_for(|s| s.state == State::Paused || s.state.is_final()),
        )
        .await
        .map(|seen| seen.is_ok_and(|s| s.state == State::Paused));
        match paused {
            Ok(true) => running = true,
            // Ended meanwhile: changed as an ended one.
            Ok(false) => {}
            Err(_) => {
                // Given up, not left paused: once the drain ends it goes on.
                if !was_paused {
                    let _ = handle.offer(Command::Resume);
                }
                return answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    json!({"error": format!("pipeline {name:?} did not pause within {}; nothing was {done}", humantime::format_duration(api.drain_timeout))}),
                );
            }
        }
        if running && !was_paused {
            resume = Some(handle);
        }
    }
    let outcome = change.await;
    if let Some(handle) = resume {
        let _ = handle.offer(Command::Resume);
    }
    match outcome {
        Ok(done) if running => {
            tracing::info!(pipeline = %name, "admin API: {done}");
            answer(StatusCode::OK, json!({"pipeline": name, "ok": done}))
        }
        Ok(done) => {
            tracing::info!(pipeline = %name, "admin API: {done} (once restarted)");
            answer(
                StatusCode::OK,
                json!({"pipeline": name, "ok": format!("{done} once restarted (it has ended)")}),
            )
        }
        Err(e) => failed(name, &e),
    }
}
