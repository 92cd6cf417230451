//! `GET /metrics`: Prometheus (OpenMetrics text) from prometheus-client.
//!
//! The counters live in each pipeline's [`Stats`](crate::engine::Stats);
//! a scrape reads them through a [`Collector`] built for that scrape, so a
//! pipeline removed by a reload leaves no stale series behind.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Api, FleetRequest, PipelineView, ask, gone};

const STATES: [&str; 6] = [
    "starting", "running", "retrying", "paused", "failed", "stopped",
];

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Every pipeline's series", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
    (status = 503, description = "ferry is stopping", body = super::doc::ErrorBody),
))]
pub(super) async fn metrics(AxumState(api): AxumState<Api>) -> Response {
    let Some(views) = ask(&api, FleetRequest::List).await else {
        return gone().into_response();
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Pipelines(views)));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!("encoding the metrics failed: {e}");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    // Labels are names and paths: masked as in the log.
    let text = crate::redact::redact(&text).into_owned();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The pipelines of one scrape.
struct Pipelines(Vec<PipelineView>);

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pipelines({})", self.0.len())
    }
}

type Labels = Vec<(&'static str, String)>;

fn pipeline(v: &PipelineView) -> Labels {
    vec![("pipeline", v.snapshot.name.clone())]
}

impl Pipelines {
    /// One metric: its descriptor, then one series per pipeline.
    fn each<M: EncodeMetric>(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help, kind): (&str, &str, MetricType),
        value: impl Fn(&PipelineView) -> M,
    ) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for v in &self.0 {
            value(v).encode(family.encode_family(&pipeline(v))?)?;
        }
        Ok(())
    }

    fn counters(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let counter = MetricType::Counter;
        let load = |a: &std::sync::atomic::AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
        self.each(
            encoder,
            (
                "ferry_records_in",
                "Records read for the first time in this run.",
                counter,
            ),
            |v| load(&v.stats.records_in),
        )?;
        self.each(
            encoder,
            (
                "ferry_records_replayed",
                "Records read again after a restart (not yet committed before it).",
                counter,
            ),
            |v| load(&v.stats.replayed),
        )?;
        self.each(
            encoder,
            (
                "ferry_records_out",
                "Records committed by the sink.",
                counter,
            ),
            |v| load(&v.stats.records_out),
        )?;
        self.each(
            encoder,
            (
                "ferry_bytes_out",
                "Size of the records committed, as JSON text (for parsed records, estimated from one in 32).",
                counter,
            ),
            |v| load(&v.stats.bytes_out),
        )?;
        self.each(
            encoder,
            (
                "ferry_dead_letters",
                "Records written to the dead-letter file.",
                counter,
            ),
            |v| load(&v.stats.dead_lettered),
        )?;
        self.each(
            encoder,
            (
                "ferry_records_filtered",
                "Records a filter transform dropped (committed past, not written).",
                counter,
            ),
            |v| load(&v.stats.filtered),
        )?;
        self.each(
            encoder,
            (
                "ferry_retries",
                "Restarts after retriable failures, and the connectors' own retries.",
                counter,
            ),
            |v| load(&v.stats.retries),
        )?;
        self.each(
            encoder,
            (
                "ferry_pipeline_restarts",
                "Attempts started after a failure.",
                counter,
            ),
            |v| ConstCounter::new(v.snapshot.status.restarts),
        )
    }

    fn states(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "ferry_pipeline_state",
            "1 for the state each pipeline is in, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for v in &self.0 {
            let now = v.snapshot.status.state.name();
            for state in STATES {
                let mut labels = pipeline(v);
                labels.push(("state", state.to_string()));
                ConstGauge::new(i64::from(state == now)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn commits(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let histogram = MetricType::Histogram;
        self.each(
            encoder,
            (
                "ferry_commit_duration_seconds",
                "How long a commit took to become durable.",
                histogram,
            ),
            |v| v.stats.commit_seconds.clone(),
        )?;
        self.each(
            encoder,
            (
                "ferry_batch_records",
                "Records (and dead letters) per commit.",
                histogram,
            ),
            |v| v.stats.batch_records.clone(),
        )?;
        let mut family = encoder.encode_descriptor(
            "ferry_last_commit_timestamp_seconds",
            "When a commit last became durable (Unix time); absent before the first.",
            None,
            MetricType::Gauge,
        )?;
        for v in &self.0 {
            if let Some(at) = v.snapshot.last_commit {
                let secs = at
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                ConstGauge::new(secs).encode(family.encode_family(&pipeline(v))?)?;
            }
        }
        Ok(())
    }
}

/// Partitions of one pipeline with a lag series of their own; the rest are
/// summed into one (`partition="others"`): a topic of thousands of
/// partitions must not make thousands of series.
const MAX_LAG_SERIES: usize = 100;

impl Pipelines {
    fn lags(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "ferry_source_lag",
            "Input past the committed position, in the source's unit (bytes, messages, rows, seconds, records).",
            None,
            MetricType::Gauge,
        )?;
        for v in &self.0 {
            let Some(report) = v.stats.lag() else {
                continue;
            };
            let mut series: Vec<(String, &'static str, f64)> = Vec::new();
            for (i, p) in report.partitions.iter().enumerate() {
                if i < MAX_LAG_SERIES {
                    series.push((p.lag.label.clone(), p.lag.unit, p.lag.amount));
                } else if let Some(last) = series.get_mut(MAX_LAG_SERIES) {
                    last.2 += p.lag.amount;
                } else {
                    series.push(("others".to_string(), p.lag.unit, p.lag.amount));
                }
            }
            for (partition, unit, amount) in series {
                let mut labels = pipeline(v);
                labels.push(("partition", partition));
                labels.push(("unit", unit.to_string()));
                ConstGauge::new(amount).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for Pipelines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.counters(&mut encoder)?;
        self.states(&mut encoder)?;
        self.commits(&mut encoder)?;
        self.lags(&mut encoder)
    }
}
