//! Durations in config files (`250ms`, `30s`, `1h`), bounded.
//!
//! Use as `#[serde(with = "ferry_api::duration")]` (or
//! `ferry_api::duration::option` for an `Option<Duration>`). A value above
//! [`MAX`] is refused when the file is loaded: a duration of
//! `5000000000000000h` passed validation once and then overflowed the clock
//! arithmetic of the running pipeline (a panic).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The longest duration any setting takes: one day.
pub const MAX: Duration = Duration::from_secs(24 * 3600);

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Parses `text` as a duration of at most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 250ms, 30s, 5m, 1h 30m"))?;
    if d > MAX {
        return Err(format!(
            "`{text}` is longer than the longest duration ferry takes (24h)"
        ));
    }
    Ok(d)
}

/// The JSON Schema of a duration setting: mark a field that uses this
/// module with `#[schemars(with = "ferry_api::duration::Text")]` (or
/// `Option<ferry_api::duration::Text>`), since the schema cannot be read off
/// `serialize`/`deserialize`.
pub struct Text;

impl schemars::JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // humantime's grammar: numbers each followed by a unit.
        schemars::json_schema!({
            "type": "string",
            "pattern": "^\\s*([0-9]+\\s*[A-Za-zµ]+\\s*)+$",
            "patternErrorMessage": "a duration such as 250ms, 30s, 5m or 1h 30m",
        })
    }
}

/// `Option<Duration>`: absent or `null` is `None`.
pub mod option {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("24h"), Ok(MAX));
        assert!(
            parse("5000000000000000h")
                .unwrap_err()
                .contains("is not a duration")
                || parse("5000000000000000h")
                    .unwrap_err()
                    .contains("longer than")
        );
        assert!(
            parse("25h")
                .unwrap_err()
                .contains("longer than the longest")
        );
        assert!(parse("soon").unwrap_err().contains("is not a duration"));
    }
}
