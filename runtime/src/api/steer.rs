//! Pause, resume and restart of a running pipeline.

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use serde_json::json;

use super::{Api, FleetRequest, Lookup, Reply, answer, ask, doc, ended, gone, unknown};
use crate::supervisor::{Command, PipelineHandle};

/// One operation on a pipeline at a time: a restart or a second reset in
/// the middle of a reset would start the pipeline from the positions the
/// reset is replacing (and two resets would write one file at once).
/// Held for the operation; another one meanwhile is refused, not queued.
pub(super) fn one_at_a_time(
    api: &Api,
    name: &str,
) -> Result<tokio::sync::OwnedMutexGuard<()>, Reply> {
    let lock = {
        let mut locks = api.steering.lock().expect("not poisoned");
        locks.entry(name.to_string()).or_default().clone()
    };
    lock.try_lock_owned().map_err(|_| {
        answer(
            StatusCode::CONFLICT,
            json!({"error": format!("another operation on pipeline {name:?} is under way (an offsets reset): try again once it is done")}),
        )
    })
}

/// Gives `command` to the supervisor, or says why it cannot take it.
pub(super) fn offer(handle: &PipelineHandle, name: &str, command: Command) -> Result<(), Reply> {
    handle.offer(command).map_err(|busy| {
        if busy {
            answer(
                StatusCode::CONFLICT,
                json!({"error": format!("pipeline {name:?} has not yet taken the operations asked before (a drain that does not end?): try again later")}),
            )
        } else {
            ended(name, "steer")
        }
    })
}

/// Sends `command` to the live pipeline `name`.
async fn steer(api: &Api, name: &str, command: Command, done: &str) -> Reply {
    let _one = match one_at_a_time(api, name) {
        Ok(guard) => guard,
        Err(reply) => return reply,
    };
    match ask(api, |tx| FleetRequest::Live(name.to_string(), tx)).await {
        Some(Lookup::Live(handle)) => {
            if let Err(reply) = offer(&handle, name, command) {
                return reply;
            }
            tracing::info!(pipeline = %name, "admin API: {done}");
            answer(StatusCode::ACCEPTED, json!({"pipeline": name, "ok": done}))
        }
        Some(Lookup::Ended) => ended(name, "steer"),
        Some(Lookup::Unknown) => unknown(name),
        None => gone(),
    }
}

/// Drains (what was read is written and committed), then reads nothing.
#[utoipa::path(post, path = "/pipelines/{name}/pause", params(("name" = String, Path, description = "A pipeline's name")), responses(
    (status = 202, description = "Taken", body = doc::Done),
    (status = 404, description = "No such pipeline", body = doc::ErrorBody),
    (status = 409, description = "Not in a state that allows it, or another operation is under way", body = doc::ErrorBody),
    (status = 503, description = "ferry is stopping", body = doc::ErrorBody),
))]
pub(super) async fn pause(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let done = "pausing: what it read is written and committed, then nothing is read";
    steer(&api, &name, Command::Pause, done).await
}

#[utoipa::path(post, path = "/pipelines/{name}/resume", params(("name" = String, Path, description = "A pipeline's name")), responses(
    (status = 202, description = "Taken", body = doc::Done),
    (status = 404, description = "No such pipeline", body = doc::ErrorBody),
    (status = 409, description = "Not in a state that allows it, or another operation is under way", body = doc::ErrorBody),
    (status = 503, description = "ferry is stopping", body = doc::ErrorBody),
))]
pub(super) async fn resume(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let done = "resuming from the committed positions";
    steer(&api, &name, Command::Resume, done).await
}

/// A running pipeline drains and starts again; an ended one starts again.
#[utoipa::path(post, path = "/pipelines/{name}/restart", params(("name" = String, Path, description = "A pipeline's name")), responses(
    (status = 202, description = "Taken", body = doc::Done),
    (status = 404, description = "No such pipeline", body = doc::ErrorBody),
    (status = 409, description = "Not in a state that allows it, or another operation is under way", body = doc::ErrorBody),
    (status = 503, description = "ferry is stopping", body = doc::ErrorBody),
))]
pub(super) async fn restart(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let _one = match one_at_a_time(&api, &name) {
        Ok(guard) => guard,
        Err(reply) => return reply,
    };
    match ask(&api, |tx| FleetRequest::Restart(name.clone(), tx)).await {
        Some(Lookup::Live(handle)) => {
            if let Err(reply) = offer(&handle, &name, Command::Restart) {
                return reply;
            }
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
