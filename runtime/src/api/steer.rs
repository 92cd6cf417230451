//! Pause, resume, restart and offsets reset of a running pipeline.

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use serde_json::json;

use super::{Api, FleetRequest, Lookup, Reply, answer, ask, ended, gone, unknown};
use crate::supervisor::{Command, PipelineHandle, State};

/// One operation on a pipeline at a time: a restart or a second reset in
/// the middle of a reset would start the pipeline from the positions the
/// reset is replacing (and two resets would write one file at once).
/// Held for the operation; another one meanwhile is refused, not queued.
fn one_at_a_time(api: &Api, name: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, Reply> {
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
fn offer(handle: &PipelineHandle, name: &str, command: Command) -> Result<(), Reply> {
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

pub(super) async fn pause(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let done = "pausing: what it read is written and committed, then nothing is read";
    steer(&api, &name, Command::Pause, done).await
}

pub(super) async fn resume(AxumState(api): AxumState<Api>, Path(name): Path<String>) -> Reply {
    let done = "resuming from the committed positions";
    steer(&api, &name, Command::Resume, done).await
}

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

/// Pause, reset, resume: one operation. A pipeline paused before stays
/// paused after.
pub(super) async fn reset_offsets(
    AxumState(api): AxumState<Api>,
    Path(name): Path<String>,
) -> Reply {
    let _one = match one_at_a_time(&api, &name) {
        Ok(guard) => guard,
        Err(reply) => return reply,
    };
    let handle = match ask(&api, |tx| FleetRequest::Live(name.clone(), tx)).await {
        Some(Lookup::Live(handle)) => handle,
        Some(Lookup::Ended) => return ended(&name, "reset"),
        Some(Lookup::Unknown) => return unknown(&name),
        None => return gone(),
    };
    let was_paused = handle.snapshot().status.state == State::Paused;
    if let Err(reply) = offer(&handle, &name, Command::Pause) {
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
        Ok(true) => {}
        Ok(false) => return ended(&name, "reset"),
        Err(_) => {
            // Given up, not left paused: once the drain ends it goes on.
            if !was_paused {
                let _ = handle.offer(Command::Resume);
            }
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
        let _ = handle.offer(Command::Resume);
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
