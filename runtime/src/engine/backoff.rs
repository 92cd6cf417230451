//! The wait between two attempts of a pipeline.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::{PipelineError, Stats};

/// Exponential backoff with jitter that gives up when ferry is stopping.
pub(super) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    stop: watch::Receiver<bool>,
    pipeline: String,
}

impl Backoff {
    pub(super) fn new(
        first: Duration,
        max: Duration,
        stop: watch::Receiver<bool>,
        pipeline: &str,
    ) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            stop,
            pipeline: pipeline.to_string(),
        }
    }

    /// Reports the failure and waits. False: ferry is stopping, give up.
    pub(super) async fn wait(&mut self, error: &PipelineError, stats: &Stats) -> bool {
        let what = error.stage();
        // The connector's own words: the stage is said apart.
        let error = match error {
            PipelineError::Connector { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        if *self.stop.borrow() {
            // Cut short by the stop itself (a write that stopped waiting for
            // its server): not a failure to retry.
            tracing::info!(pipeline = %self.pipeline, error = %error, "{what} ended by the stop");
            return false;
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        // Full jitter on the upper half: many pipelines hitting one server
        // do not retry in lockstep.
        let delay = self.next.mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::warn!(
            pipeline = %self.pipeline,
            error = %error,
            retry_in = ?delay,
            "{what} failed; starting again from the committed positions"
        );
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.stop.wait_for(|s| *s) => false,
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}
