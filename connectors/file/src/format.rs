//! Lines ⇄ records for the three formats.

use ferry_api::{Payload, Value};
use serde_json::Map;

use crate::Format;

/// What one input line (or CSV row) became.
pub(crate) enum Parsed {
    Record(Value),
    /// Not an error, not a record: a blank line, or the CSV header.
    Skip,
    Invalid(String),
}

/// Parses one complete line (without its line ending). `header` is the CSV
/// header of the file, set by the first row.
pub(crate) fn parse_line(format: Format, line: &[u8], header: &mut Option<Vec<String>>) -> Parsed {
    match format {
        Format::Json => {
            if line.iter().all(u8::is_ascii_whitespace) {
                return Parsed::Skip;
            }
            match serde_json::from_slice::<Value>(line) {
                Ok(v @ Value::Object(_)) => Parsed::Record(v),
                Ok(other) => Parsed::Invalid(format!(
                    "expected a JSON object, found {}",
                    json_kind(&other)
                )),
                Err(e) => Parsed::Invalid(format!("invalid JSON: {e}")),
            }
        }
        Format::Text => match std::str::from_utf8(line) {
            Ok(s) => Parsed::Record(Value::String(s.to_string())),
            Err(e) => Parsed::Invalid(format!("invalid UTF-8: {e}")),
        },
        Format::Csv => {
            if line.is_empty() {
                return Parsed::Skip;
            }
            let fields = match parse_csv_row(line) {
                Ok(f) => f,
                Err(e) => return Parsed::Invalid(e),
            };
            match header {
                None => {
                    *header = Some(fields);
                    Parsed::Skip
                }
                Some(h) if h.len() != fields.len() => Parsed::Invalid(format!(
                    "expected {} fields (as in the header), found {}",
                    h.len(),
                    fields.len()
                )),
                Some(h) => {
                    let mut obj = Map::with_capacity(h.len());
                    for (k, v) in h.iter().zip(fields) {
                        obj.insert(k.clone(), Value::String(v));
                    }
                    Parsed::Record(Value::Object(obj))
                }
            }
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn parse_csv_row(line: &[u8]) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line);
    let mut row = csv::StringRecord::new();
    match reader.read_record(&mut row) {
        Ok(_) => Ok(row.iter().map(str::to_string).collect()),
        Err(e) => Err(format!("invalid CSV: {e}")),
    }
}

/// Whether a CSV row read so far ends inside a quoted field (a newline in a
/// quoted field belongs to the field, so the row goes on to the next line).
pub(crate) fn csv_row_open(row: &[u8]) -> bool {
    row.iter().filter(|&&b| b == b'"').count() % 2 == 1
}

/// Appends one record to `out` in `format`, ending with a newline.
pub(crate) fn write_record(format: Format, value: &Payload, columns: &[String], out: &mut Vec<u8>) {
    match format {
        Format::Json => {
            // The source's JSON text as it came, when it handed that over.
            value.write_json(out);
            out.push(b'\n');
        }
        Format::Text => {
            match &**value {
                Value::String(s) => out.extend_from_slice(s.as_bytes()),
                other => {
                    serde_json::to_writer(&mut *out, other).expect("a JSON value always serializes")
                }
            }
            out.push(b'\n');
        }
        Format::Csv => {
            let cells = columns.iter().map(|c| match value.get(c) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            });
            write_csv_row(cells, out);
        }
    }
}

pub(crate) fn write_csv_row(cells: impl IntoIterator<Item = String>, out: &mut Vec<u8>) {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out);
    w.write_record(cells)
        .expect("writing CSV to memory cannot fail");
    w.flush().expect("writing CSV to memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines() {
        let mut h = None;
        assert!(matches!(
            parse_line(Format::Json, br#"{"a":1}"#, &mut h),
            Parsed::Record(_)
        ));
        assert!(matches!(
            parse_line(Format::Json, b"  ", &mut h),
            Parsed::Skip
        ));
        match parse_line(Format::Json, b"42", &mut h) {
            Parsed::Invalid(e) => assert_eq!(e, "expected a JSON object, found a number"),
            _ => panic!("a number is not a record"),
        }
        assert!(matches!(
            parse_line(Format::Json, b"{oops", &mut h),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn csv_rows_with_header_and_quotes() {
        let mut h = None;
        assert!(matches!(
            parse_line(Format::Csv, b"id,name", &mut h),
            Parsed::Skip
        ));
        match parse_line(Format::Csv, b"1,\"a, \"\"b\"\"\nc\"", &mut h) {
            Parsed::Record(v) => {
                assert_eq!(v["id"], "1");
                assert_eq!(v["name"], "a, \"b\"\nc");
            }
            _ => panic!("row expected"),
        }
        assert!(matches!(
            parse_line(Format::Csv, b"1,2,3", &mut h),
            Parsed::Invalid(_)
        ));
        assert!(csv_row_open(b"1,\"a\n"));
        assert!(!csv_row_open(b"1,\"a\"\"b\"\n"));
    }

    #[test]
    fn csv_round_trip() {
        let cols = vec!["id".to_string(), "name".to_string()];
        let mut out = Vec::new();
        write_record(
            Format::Csv,
            &serde_json::json!({"id": 7, "name": "x,y"}).into(),
            &cols,
            &mut out,
        );
        assert_eq!(out, b"7,\"x,y\"\n");
    }
}
