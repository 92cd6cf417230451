//! Where a sink that writes to named places (tables, collections) sends
//! each record: one name, a record field, or the name a `route` transform
//! gave the record.

use std::borrow::Cow;

use ferry_api::{Record, Value};

/// `table: orders` or `table: {field: region}` (and the same for a
/// collection): where records go unless a `route` transform sent them
/// elsewhere ([`Record::destination`]).
#[derive(Debug, Clone, serde::Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(untagged, expecting = "expected a name, or `{field: name}`")]
pub enum Destination {
    /// Always this one (unless routed).
    Name(String),
    /// The value of a record field (a dotted path), per record.
    Field {
        /// The record field that holds the name.
        field: String,
    },
}

/// A field's value as the name of a destination (a table, a collection,
/// a topic): text as it is, a number or a boolean as its text; `None` for
/// null and empty text, which name nothing; what the value is when it
/// cannot be a name (an object, an array). The `route` transform and the
/// sinks' `{field: …}` read names alike.
pub fn name_in(v: &Value) -> Result<Option<Cow<'_, str>>, &'static str> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(Cow::Borrowed(s))),
        Value::Number(_) | Value::Bool(_) => Ok(Some(Cow::Owned(v.to_string()))),
        other => Err(crate::json_kind(other)),
    }
}

impl Destination {
    /// The one name, when records do not choose theirs.
    pub fn fixed(&self) -> Option<&str> {
        match self {
            Destination::Name(n) => Some(n),
            Destination::Field { .. } => None,
        }
    }

    /// The name `record` goes to: its route's, else its field's, else the
    /// fixed one; or why it has none.
    pub fn of<'r>(&'r self, record: &'r Record) -> Result<Cow<'r, str>, String> {
        if let Some(routed) = &record.destination {
            return Ok(Cow::Borrowed(routed));
        }
        match self {
            Destination::Name(n) => Ok(Cow::Borrowed(n)),
            Destination::Field { field } => {
                let found = field.split('.').try_fold(&*record.value, |v, k| v.get(k));
                let Some(found) = found else {
                    return Err(format!("no field `{field}` (the destination)"));
                };
                match name_in(found) {
                    Ok(Some(name)) => Ok(name),
                    Ok(None) => Err(format!(
                        "field `{field}` (the destination) is {}",
                        if found.is_null() { "null" } else { "empty" }
                    )),
                    Err(kind) => Err(format!(
                        "field `{field}` (the destination) is {kind}, not a name"
                    )),
                }
            }
        }
    }

    /// For messages: the name, or where it comes from.
    pub fn describe(&self) -> String {
        match self {
            Destination::Name(n) => n.clone(),
            Destination::Field { field } => format!("{{field: {field}}}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{Partition, Position};
    use serde_json::json;

    fn record(v: Value, routed: Option<&str>) -> Record {
        let position = Position {
            partition: std::sync::Arc::new(Partition::new("p")),
            offset: json!(0),
        };
        let mut r = Record::new(v, position);
        r.destination = routed.map(str::to_string);
        r
    }

    #[test]
    fn a_route_wins_then_the_field_then_the_name() {
        let by_field: Destination = serde_json::from_str(r#"{"field": "geo.region"}"#).unwrap();
        let fixed: Destination = serde_json::from_str(r#""orders""#).unwrap();
        let r = record(json!({"geo": {"region": "eu"}}), None);
        assert_eq!(by_field.of(&r).unwrap(), "eu");
        assert_eq!(fixed.of(&r).unwrap(), "orders");
        let routed = record(json!({"geo": {"region": "eu"}}), Some("audit"));
        assert_eq!(by_field.of(&routed).unwrap(), "audit");
        assert_eq!(fixed.of(&routed).unwrap(), "audit");
        assert!(
            by_field
                .of(&record(json!({}), None))
                .unwrap_err()
                .contains("no field")
        );
        let e = by_field
            .of(&record(json!({"geo": {"region": {}}}), None))
            .unwrap_err();
        assert!(e.contains("an object"), "{e}");
    }
}
