//! Index names from a template: `orders`, `orders-{yyyy.MM.dd}` (the
//! record's timestamp, UTC), `events-{tenant}` (a record field).

use ferry_api::{Record, Value};

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    /// A date format of `yyyy`, `MM`, `dd`, `HH` and separators.
    Date(String),
    /// A field, dotted for nested objects.
    Field(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IndexTemplate {
    parts: Vec<Part>,
}

/// Why Elasticsearch would refuse `name` as an index name, if it would.
pub(crate) fn invalid_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > 255 {
        Some("is longer than 255 bytes")
    } else if name.chars().any(|c| c.is_uppercase()) {
        Some("must be lowercase")
    } else if name.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
        Some("must not contain \\ / * ? \" < > | space , # :")
    } else if name.starts_with(['-', '_', '+']) {
        Some("must not start with - _ +")
    } else if name == "." || name == ".." {
        Some("must not be . or ..")
    } else {
        None
    }
}

fn is_date_format(s: &str) -> bool {
    let tokens = ["yyyy", "MM", "dd", "HH"];
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        if let Some(t) = tokens.iter().find(|t| rest.starts_with(**t)) {
            rest = &rest[t.len()..];
            any = true;
        } else if rest.starts_with(['.', '-', '_']) {
            rest = &rest[1..];
        } else {
            return false;
        }
    }
    any
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn format_date(format: &str, ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let h = secs.rem_euclid(86_400) / 3600;
    format
        .replace("yyyy", &format!("{y:04}"))
        .replace("MM", &format!("{m:02}"))
        .replace("dd", &format!("{d:02}"))
        .replace("HH", &format!("{h:02}"))
}

impl IndexTemplate {
    pub(crate) fn parse(template: &str) -> Result<IndexTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("`{template}`: a `{{` without its `}}`"));
            };
            let inner = &rest[open + 1..open + close];
            if inner.is_empty() {
                return Err(format!("`{template}`: an empty `{{}}`"));
            }
            parts.push(if is_date_format(inner) {
                Part::Date(inner.to_string())
            } else {
                Part::Field(inner.to_string())
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{template}`: a `}}` without its `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        // The fixed parts must be valid in any name (checked with a
        // placeholder standing for what the template fills in).
        let sample: String = parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                _ => "x",
            })
            .collect();
        if let Some(why) = invalid_name(&sample) {
            return Err(format!("`{template}` is not a valid index name: it {why}"));
        }
        Ok(IndexTemplate { parts })
    }

    pub(crate) fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The index of `record`, or why it has none. A routed record goes to
    /// the index its route names, whatever the template.
    pub(crate) fn render(&self, record: &Record, now_ms: i64) -> Result<String, String> {
        if let Some(routed) = &record.destination {
            return match invalid_name(routed) {
                Some(why) => Err(format!("index name `{routed}` (routed) {why}")),
                None => Ok(routed.clone()),
            };
        }
        // A fixed name was checked when the template was parsed.
        if let [Part::Literal(name)] = self.parts.as_slice() {
            return Ok(name.clone());
        }
        let mut name = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => name.push_str(s),
                Part::Date(f) => {
                    name.push_str(&format_date(f, record.timestamp_ms.unwrap_or(now_ms)))
                }
                Part::Field(f) => {
                    let v = f
                        .split('.')
                        .try_fold(&*record.value, |v, k| v.get(k))
                        .ok_or_else(|| format!("no field `{f}` for the index name"))?;
                    match v {
                        Value::String(s) => name.push_str(s),
                        Value::Number(n) => name.push_str(&n.to_string()),
                        Value::Bool(b) => name.push_str(&b.to_string()),
                        _ => {
                            return Err(format!(
                                "field `{f}` is not a string or number, so it cannot name an index"
                            ));
                        }
                    }
                }
            }
        }
        match invalid_name(&name) {
            Some(why) => Err(format!("index name `{name}` {why}")),
            None => Ok(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{Partition, Position};
    use std::sync::Arc;

    fn record(value: Value, ts: Option<i64>) -> Record {
        let mut r = Record::new(
            value,
            Position {
                partition: Arc::new(Partition::new("p")),
                offset: Value::from(1),
            },
        );
        r.timestamp_ms = ts;
        r
    }

    #[test]
    fn dates_and_fields() {
        let t = IndexTemplate::parse("orders-{yyyy.MM.dd}").unwrap();
        // 2024-02-29T13:00:00Z
        let r = record(serde_json::json!({}), Some(1_709_211_600_000));
        assert_eq!(t.render(&r, 0).unwrap(), "orders-2024.02.29");
        let t = IndexTemplate::parse("logs-{tenant.name}-{yyyy-MM-dd-HH}").unwrap();
        let r = record(serde_json::json!({"tenant": {"name": "acme"}}), Some(0));
        assert_eq!(t.render(&r, 0).unwrap(), "logs-acme-1970-01-01-00");
        let r = record(serde_json::json!({"tenant": {"name": "ACME"}}), Some(0));
        assert!(t.render(&r, 0).unwrap_err().contains("lowercase"));
        let r = record(serde_json::json!({}), Some(0));
        assert!(
            t.render(&r, 0)
                .unwrap_err()
                .contains("no field `tenant.name`")
        );
        assert!(IndexTemplate::parse("orders").unwrap().is_static());
    }

    #[test]
    fn bad_templates() {
        assert!(
            IndexTemplate::parse("Orders")
                .unwrap_err()
                .contains("lowercase")
        );
        assert!(IndexTemplate::parse("orders-{yyyy").is_err());
        assert!(IndexTemplate::parse("_orders").is_err());
        assert!(IndexTemplate::parse("a b").is_err());
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
