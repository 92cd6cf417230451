//! The API's accept loop: hyper's HTTP/1 server with the limits
//! `axum::serve` does not set. At most [`MAX_CONNECTIONS`] connections are
//! served at once (past that, new ones wait in the kernel's queue: a flood
//! of connections cannot take the file descriptors the pipelines need), and
//! a connection that has not sent a whole request head within
//! [`HEAD_TIMEOUT`] — a half-sent request, or an idle keep-alive — is
//! closed, so slow clients cannot hold the slots either.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's head (and may stay
/// idle between requests).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `closed` resolves.
pub(crate) async fn serve(listener: TcpListener, app: Router, closed: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Tells the connections to finish their request and close.
    let (stopping, stop) = watch::channel(false);
    let mut accept_errors = Throttle::default();
    tokio::pin!(closed);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut closed => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut closed => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                if let Some(more) = accept_errors.allow() {
                    tracing::warn!("admin API: accepting a connection: {e}{more}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(request.map(axum::body::Body::new))
                },
            );
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopped = tokio::select! {
                _ = connection.as_mut() => false,
                // (The watch's guard is dropped here: it is not Send.)
                seen = stop.wait_for(|stop| *stop) => seen.is_ok(),
            };
            if stopped {
                connection.as_mut().graceful_shutdown();
                // What is being answered is finished, within a bound.
                let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
            }
        });
    }
    stopping.send_replace(true);
}

/// At most one line a second of a kind of warning, saying how many were
/// left out since: a client that repeats a refused request cannot fill the
/// log.
#[derive(Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    left_out: u64,
}

impl Throttle {
    /// Some(suffix for the line) when a line may be logged now.
    pub(crate) fn allow(&mut self) -> Option<String> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        let more = std::mem::take(&mut self.left_out);
        Some(if more > 0 {
            format!(" ({more} more like it in the last second, not logged)")
        } else {
            String::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let mut t = Throttle::default();
        assert_eq!(t.allow().as_deref(), Some(""));
        assert!(t.allow().is_none());
        assert!(t.allow().is_none());
        t.last = Some(Instant::now() - Duration::from_secs(2));
        assert!(t.allow().unwrap().contains("2 more"));
    }
}
