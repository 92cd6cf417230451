//! Measures each running pipeline's lag every few seconds, through the
//! source's [`Backlog`] (a connection of its own, beside the source), and
//! keeps the last report in the pipeline's [`Stats`] for the API and the
//! metrics. A measurement that fails or hangs is reported and tried again;
//! it never touches the pipeline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferry_api::{Backlog, BuildContext, Lag};
use tokio::sync::watch;

use crate::config::PipelineConfig;
use crate::engine::Stats;
use crate::supervisor::{State, Status};

/// How often the lag is measured.
const EVERY: Duration = Duration::from_secs(5);
/// The longest a measurement (or building the probe) may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The last measurement of a pipeline's lag.
#[derive(Debug, Clone)]
pub struct LagReport {
    pub at: SystemTime,
    pub partitions: Vec<PartitionLag>,
    /// Why the last measurement failed, when it did (`partitions` are then
    /// those of the one before).
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PartitionLag {
    pub lag: Lag,
    /// When the lag would be gone at the speed it shrank since the last
    /// measurement; none while it does not shrink.
    pub eta_seconds: Option<f64>,
}

/// Runs until aborted (the supervisor aborts it when the pipeline ends).
pub(crate) async fn watch(
    p: Arc<PipelineConfig>,
    stats: Arc<Stats>,
    status: watch::Receiver<Status>,
    data_dir: PathBuf,
) {
    let ctx = context(&p, &data_dir);
    let mut probe: Option<Box<dyn Backlog>> = None;
    let mut before: HashMap<String, (f64, Instant)> = HashMap::new();
    // The first measurement soon after the start: an operator is looking.
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::time::sleep(wait).await;
        wait = EVERY;
        // Paused, the backlog grows: the operator wants to see it. Retrying,
        // the source may answer even if the sink does not.
        let state = status.borrow().state.clone();
        if !matches!(
            state,
            State::Running | State::Paused | State::Retrying { .. }
        ) {
            continue;
        }
        if probe.is_none() {
            match tokio::time::timeout(TIMEOUT, p.source.backlog(&ctx)).await {
                Ok(Ok(Some(b))) => probe = Some(b),
                Ok(Ok(None)) => return, // this source's lag cannot be measured
                Ok(Err(e)) => {
                    stats.lag_failed(format!("measuring the lag: {e}"));
                    continue;
                }
                Err(_) => {
                    stats.lag_failed(format!(
                        "measuring the lag: no connection within {TIMEOUT:?}"
                    ));
                    continue;
                }
            }
        }
        let committed = stats.committed_positions();
        let measured =
            tokio::time::timeout(TIMEOUT, probe.as_mut().expect("built").measure(&committed)).await;
        match measured {
            Ok(Ok(lags)) => stats.set_lag(report(lags, &mut before)),
            Ok(Err(e)) => {
                stats.lag_failed(format!("measuring the lag: {e}"));
                probe = None; // a fresh connection next time
            }
            Err(_) => {
                stats.lag_failed(format!("measuring the lag: no answer within {TIMEOUT:?}"));
                probe = None;
            }
        }
    }
}

/// What a probe (or an offsets check) gets to build with: the pipeline's
/// own context, without its stop (the probe is aborted) and without
/// counting its retries.
pub(crate) fn context(p: &PipelineConfig, data_dir: &std::path::Path) -> BuildContext {
    BuildContext {
        pipeline: p.name.clone(),
        once: false,
        stopping: ferry_api::Stopping::never(),
        writes: p.local_writes(data_dir),
        retries: ferry_api::Retries::default(),
    }
}

/// The lags with their ETAs against the measurement `before`, which then
/// holds this one's partitions only (rotated files come and go for months).
fn report(lags: Vec<Lag>, before: &mut HashMap<String, (f64, Instant)>) -> LagReport {
    let now = Instant::now();
    let mut seen = HashMap::with_capacity(lags.len());
    let partitions = lags
        .into_iter()
        .map(|lag| {
            let eta_seconds = before
                .get(&lag.partition)
                .and_then(|&(was, at)| eta(was, lag.amount, now.duration_since(at).as_secs_f64()));
            seen.insert(lag.partition.clone(), (lag.amount, now));
            PartitionLag { lag, eta_seconds }
        })
        .collect();
    *before = seen;
    LagReport {
        at: SystemTime::now(),
        partitions,
        error: None,
    }
}

/// Seconds until `now` reaches 0 at the speed it fell from `was` in `secs`.
fn eta(was: f64, now: f64, secs: f64) -> Option<f64> {
    if now <= 0.0 {
        return Some(0.0);
    }
    let speed = (was - now) / secs;
    (secs > 0.0 && speed > 0.0).then(|| now / speed)
}

#[cfg(test)]
mod tests {
    use super::eta;

    #[test]
    fn the_eta_is_the_time_to_zero_at_the_speed_it_shrank() {
        assert_eq!(eta(1000.0, 600.0, 2.0), Some(3.0));
        assert_eq!(eta(600.0, 600.0, 2.0), None, "not shrinking");
        assert_eq!(eta(600.0, 700.0, 2.0), None, "growing");
        assert_eq!(eta(600.0, 0.0, 2.0), Some(0.0));
    }
}
