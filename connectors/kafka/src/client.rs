//! What librdkafka reports while it retries by itself, told to the operator
//! once, truthfully, and counted.
//!
//! librdkafka reconnects to brokers and resends requests on its own, and
//! reports every failed attempt: while a broker is down that is dozens of
//! messages a second, in a few alternating shapes ("Connect to … failed",
//! "1/1 brokers are down"). [`Troubles`] logs each kind (its error code)
//! at most once per [`Troubles::EVERY`], with the number of repeats since,
//! and counts every failed attempt in the pipeline's `retries`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_api::Retries;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The rate-limited, counted reports of one client.
pub(crate) struct Troubles {
    pipeline: String,
    retries: Retries,
    /// By kind: when it was last logged, and how often it came since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Troubles {
    /// One line per kind of trouble at most this often.
    pub(crate) const EVERY: Duration = Duration::from_secs(10);

    pub(crate) fn new(pipeline: &str, retries: Retries) -> Troubles {
        Troubles {
            pipeline: pipeline.to_string(),
            retries,
            seen: Mutex::default(),
        }
    }

    /// Logs `message` unless a trouble of this `kind` was logged less than
    /// [`Self::EVERY`] ago (then it is counted, and the count told with the
    /// next line of its kind).
    pub(crate) fn report(&self, kind: &str, message: &str) {
        let repeats = {
            let mut seen = self.seen.lock().expect("not poisoned");
            match seen.get_mut(kind) {
                Some((at, repeats)) if at.elapsed() < Self::EVERY => {
                    *repeats += 1;
                    return;
                }
                Some((at, repeats)) => {
                    *at = Instant::now();
                    std::mem::take(repeats)
                }
                None => {
                    seen.insert(kind.to_string(), (Instant::now(), 0));
                    0
                }
            }
        };
        if repeats > 0 {
            tracing::warn!(pipeline = %self.pipeline, "{message} (and {repeats} more like it since the last report)");
        } else {
            tracing::warn!(pipeline = %self.pipeline, "{message}");
        }
    }

    /// A global error of the client (librdkafka's error callback): a broker
    /// it cannot reach, a request that timed out. librdkafka retries each by
    /// itself; every one but the summary "all brokers are down" is a failed
    /// attempt, counted as a retry.
    pub(crate) fn client_error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code != Some(RDKafkaErrorCode::AllBrokersDown) {
            self.retries.count();
        }
        let kind = code.map_or_else(|| "other".to_string(), |c| format!("{c:?}"));
        self.report(
            &kind,
            &format!("kafka: {reason}; librdkafka keeps retrying"),
        );
    }

    /// librdkafka's own log lines: errors and offset resets are reported
    /// like the error callback's, the rest goes to the debug log. (Its other warnings repeat
    /// what the error callback says — a failed connection is both — or are
    /// the guard of `librdkafka.rs` at work.)
    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            // A failed connection: the error callback reports it too.
            _ if facility == "FAIL" => {
                tracing::debug!(pipeline = %self.pipeline, "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => self.report(
                facility,
                &format!("kafka: librdkafka: {facility} {message}"),
            ),
            // An offset reset ("offset reset (at offset 1018) to BEGINNING:
            // … Offset out of range") moves where a partition is read: back
            // (records the source already handed over come again, and the
            // source skips them) or forward (records are skipped for good).
            // An operator must hear of either.
            RDKafkaLogLevel::Warning if facility == "OFFSET" => self.report(
                facility,
                &format!("kafka: librdkafka: {facility} {message}"),
            ),
            _ => tracing::debug!(pipeline = %self.pipeline, "librdkafka: {facility} {message}"),
        }
    }

    /// Whether an error that reached the consumer's poll is a connection
    /// trouble the error callback already reported.
    pub(crate) fn is_connection(code: Option<RDKafkaErrorCode>) -> bool {
        matches!(
            code,
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::Resolve
            )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failed_attempt_counts_but_the_summary_does_not() {
        let retries = Retries::default();
        let t = Troubles::new("p", retries.clone());
        let down = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        let all = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        for _ in 0..40 {
            t.client_error(
                &down,
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed",
            );
            t.client_error(&all, "1/1 brokers are down");
        }
        assert_eq!(retries.get(), 40);
        // Two kinds, each logged once; the rest counted.
        let seen = t.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen.values().all(|&(_, repeats)| repeats == 39));
    }
}
