//! Times in records: how the `timestamp` step reads and writes them, and
//! what `cast: timestamp` takes. Times without a zone are UTC.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use ferry_api::Value;

use super::steps::shown;

/// A way of writing a time.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TimeFormat {
    /// `2026-12-03T14:51:30.123Z` (any offset when read).
    Rfc3339,
    /// Seconds since the Unix epoch, a number (fractions allowed).
    UnixS,
    /// Milliseconds since the Unix epoch, a number.
    UnixMs,
    /// A `strftime` pattern (`%Y-%m-%d %H:%M:%S`), as text.
    Pattern(String),
}

impl TimeFormat {
    /// `rfc3339`, `unix_s`, `unix_ms`, or a pattern with at least one `%`
    /// item that chrono knows.
    pub(super) fn parse(text: &str) -> Result<TimeFormat, String> {
        Ok(match text {
            "rfc3339" => TimeFormat::Rfc3339,
            "unix_s" => TimeFormat::UnixS,
            "unix_ms" => TimeFormat::UnixMs,
            pattern if pattern.contains('%') => {
                let items = chrono::format::StrftimeItems::new(pattern);
                if items
                    .clone()
                    .any(|i| matches!(i, chrono::format::Item::Error))
                {
                    return Err(format!(
                        "{pattern:?} is not a strftime pattern chrono knows"
                    ));
                }
                // Some items only read (`%#z`): writing a time must work.
                let sample = DateTime::<Utc>::UNIX_EPOCH.format_with_items(items);
                if write!(String::new(), "{sample}").is_err() {
                    return Err(format!(
                        "{pattern:?} cannot write a time (an item of it only reads)"
                    ));
                }
                TimeFormat::Pattern(pattern.to_string())
            }
            other => {
                return Err(format!(
                    "{other:?} is not a time format: rfc3339, unix_s, unix_ms, or a strftime pattern (%Y-%m-%d %H:%M:%S)"
                ));
            }
        })
    }

    /// The time `v` holds, written this way.
    pub(super) fn read(&self, v: &Value) -> Result<DateTime<Utc>, String> {
        let wrong = || format!("{} is not a time written {}", shown(v), self.name());
        match (self, v) {
            (TimeFormat::Rfc3339, Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("{}: {e}", wrong())),
            (TimeFormat::UnixS, v) => number(v)
                .and_then(|s| from_millis((s * 1000.0).round()))
                .ok_or_else(wrong),
            (TimeFormat::UnixMs, v) => number(v).and_then(from_millis).ok_or_else(wrong),
            (TimeFormat::Pattern(p), Value::String(s)) => match DateTime::parse_from_str(s, p) {
                Ok(t) => Ok(t.with_timezone(&Utc)),
                // No zone in the pattern: UTC; no time of day: midnight.
                Err(_) => NaiveDateTime::parse_from_str(s, p)
                    .or_else(|e| {
                        chrono::NaiveDate::parse_from_str(s, p)
                            .map(|d| d.and_time(chrono::NaiveTime::MIN))
                            .map_err(|_| e)
                    })
                    .map(|t| Utc.from_utc_datetime(&t))
                    .map_err(|e| format!("{}: {e}", wrong())),
            },
            _ => Err(wrong()),
        }
    }

    /// `t` written this way.
    pub(super) fn write(&self, t: DateTime<Utc>) -> Result<Value, String> {
        Ok(match self {
            TimeFormat::Rfc3339 => {
                // RFC 3339 has four-digit years.
                if !(0..=9999).contains(&t.year()) {
                    return Err(format!(
                        "year {} cannot be written in RFC 3339 (years 0 to 9999)",
                        t.year()
                    ));
                }
                Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            }
            TimeFormat::UnixS => {
                let ms = t.timestamp_millis();
                if ms % 1000 == 0 {
                    Value::from(ms / 1000)
                } else {
                    Value::from(ms as f64 / 1000.0)
                }
            }
            TimeFormat::UnixMs => Value::from(t.timestamp_millis()),
            TimeFormat::Pattern(p) => {
                let mut text = String::new();
                write!(text, "{}", t.format(p)).map_err(|_| format!("{p:?} cannot write {t}"))?;
                Value::String(text)
            }
        })
    }

    fn name(&self) -> String {
        match self {
            TimeFormat::Rfc3339 => "as RFC 3339".to_string(),
            TimeFormat::UnixS => "as Unix seconds".to_string(),
            TimeFormat::UnixMs => "as Unix milliseconds".to_string(),
            TimeFormat::Pattern(p) => format!("as {p:?}"),
        }
    }
}

/// A number, or text holding one.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn from_millis(ms: f64) -> Option<DateTime<Utc>> {
    (ms.is_finite() && ms.abs() < 8.0e15)
        .then(|| DateTime::from_timestamp_millis(ms as i64))
        .flatten()
}

/// `cast: timestamp`: RFC 3339 text, or Unix seconds, as RFC 3339 (UTC).
pub(super) fn cast_timestamp(v: &Value) -> Result<Value, ()> {
    let at = match v {
        Value::String(_) => TimeFormat::Rfc3339.read(v),
        Value::Number(_) => TimeFormat::UnixS.read(v),
        _ => return Err(()),
    };
    at.and_then(|t| TimeFormat::Rfc3339.write(t)).map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_read_and_written_in_every_format() {
        let pattern = TimeFormat::parse("%Y-%m-%d %H:%M:%S").unwrap();
        let t = pattern.read(&json!("2026-12-03 14:51:30")).unwrap();
        assert_eq!(
            TimeFormat::Rfc3339.write(t).unwrap(),
            json!("2026-12-03T14:51:30Z")
        );
        assert_eq!(TimeFormat::UnixS.write(t).unwrap(), json!(1_796_309_490));
        assert_eq!(
            TimeFormat::UnixMs.write(t).unwrap(),
            json!(1_796_309_490_000i64)
        );
        // Parse-only items, dates without a time, years RFC 3339 cannot hold.
        assert!(TimeFormat::parse("%#z").is_err());
        let day = TimeFormat::parse("%Y-%m-%d").unwrap();
        let midnight = day.read(&json!("2020-01-01")).unwrap();
        assert_eq!(
            TimeFormat::Rfc3339.write(midnight).unwrap(),
            json!("2020-01-01T00:00:00Z")
        );
        assert!(cast_timestamp(&json!(253_402_300_800i64)).is_err());
        assert_eq!(
            TimeFormat::UnixMs
                .read(&json!(1_796_309_490_000i64))
                .unwrap(),
            t
        );
        assert_eq!(
            TimeFormat::Rfc3339
                .read(&json!("2026-12-03T15:51:30+01:00"))
                .unwrap(),
            t
        );
        assert!(pattern.read(&json!("yesterday")).is_err());
        assert!(TimeFormat::parse("iso").is_err());
        assert!(TimeFormat::parse("%Q").is_err());
        assert_eq!(
            cast_timestamp(&json!(1_796_309_490)).unwrap(),
            json!("2026-12-03T14:51:30Z")
        );
    }
}
