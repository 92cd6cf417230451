//! Lines ⇄ records for the three formats.

use ferry_api::{Payload, Value};
use ferry_connector_kit::json_kind;
use serde_json::Map;

use crate::Format;

/// What one input line (or CSV row) became.
pub(crate) enum Parsed {
    Record(Value),
    /// Not an error, not a record: a blank line, or the CSV header.
    Skip,
    Invalid(String),
}

/// The CSV header of a file, as far as it has been read.
#[derive(Debug, Clone, Default)]
pub(crate) enum CsvHeader {
    /// Not read yet: the next row is the header.
    #[default]
    Unread,
    Good(Vec<String>),
    /// The header row was refused (and dead-lettered): no row of the file
    /// can be read without it, so each is a bad record naming why.
    Bad(String),
}

impl CsvHeader {
    /// The header from its row's fields: names must be unique, or a field
    /// would silently overwrite another.
    pub(crate) fn from_fields(fields: Vec<String>) -> CsvHeader {
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<&str> = fields
            .iter()
            .filter(|f| !seen.insert(f.as_str()))
            .map(String::as_str)
            .collect();
        if dups.is_empty() {
            CsvHeader::Good(fields)
        } else {
            CsvHeader::Bad(format!(
                "the CSV header names {} more than once",
                dups.iter()
                    .map(|d| format!("{d:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

/// A UTF-8 byte-order mark, which editors on Windows put at the start of a file.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses one complete line (without its line ending). `header` is the CSV
/// header of the file, set by the first row.
pub(crate) fn parse_line(format: Format, line: &[u8], header: &mut CsvHeader) -> Parsed {
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
            if let CsvHeader::Bad(why) = header {
                return Parsed::Invalid(format!(
                    "this file's CSV header was refused ({why}): its rows cannot be read"
                ));
            }
            let fields = match parse_csv_row(line) {
                Ok(f) => f,
                Err(e) if matches!(header, CsvHeader::Unread) => {
                    *header = CsvHeader::Bad(format!("header row: {e}"));
                    return Parsed::Invalid(format!("header row: {e}"));
                }
                Err(e) => return Parsed::Invalid(e),
            };
            match header {
                CsvHeader::Unread => {
                    *header = CsvHeader::from_fields(fields);
                    match header {
                        CsvHeader::Bad(why) => Parsed::Invalid(why.clone()),
                        _ => Parsed::Skip,
                    }
                }
                CsvHeader::Good(h) if h.len() != fields.len() => Parsed::Invalid(format!(
                    "expected {} fields (as in the header), found {}",
                    h.len(),
                    fields.len()
                )),
                CsvHeader::Good(h) => {
                    let mut obj = Map::with_capacity(h.len());
                    for (k, v) in h.iter().zip(fields) {
                        obj.insert(k.clone(), Value::String(v));
                    }
                    Parsed::Record(Value::Object(obj))
                }
                CsvHeader::Bad(_) => unreachable!("returned above"),
            }
        }
    }
}

pub(crate) fn parse_csv_row(line: &[u8]) -> Result<Vec<String>, String> {
    // The csv crate drops a byte-order mark at the start of what it reads;
    // inside a file (the start of the file has been dealt with) it is a
    // character of the row. After an empty line, which it skips, it stays.
    let guarded;
    let line = if line.starts_with(BOM) {
        guarded = [b"\n", line].concat();
        &guarded[..]
    } else {
        line
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line);
    let mut row = csv::StringRecord::new();
    match reader.read_record(&mut row) {
        Ok(_) => {}
        Err(e) => return Err(format!("invalid CSV: {e}")),
    }
    // One line is one row: the csv crate also ends a row at a lone carriage
    // return, and what followed it would be dropped unseen.
    let mut more = csv::StringRecord::new();
    if reader.read_record(&mut more).unwrap_or(true) {
        return Err(
            "more than one CSV row on this line (a carriage return inside a field must be quoted)"
                .into(),
        );
    }
    Ok(row.iter().map(str::to_string).collect())
}

/// Where a CSV row read so far stands, by the csv crate's own rules: a
/// quote opens a quoted field only at the start of a field (in `5'10"` it
/// is a plain character); inside one, `""` is a quote and a lone `"` closes
/// it. A newline inside a quoted field belongs to the field, so the row goes
/// on to the next line. Fed piece by piece as the row grows, never the
/// whole row again.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CsvRow {
    in_quotes: bool,
    /// Inside a quoted field, a `"` was just read: a second one is a quote,
    /// anything else closes the field.
    quote_pending: bool,
    mid_field: bool,
}

impl CsvRow {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_quotes {
                if self.quote_pending {
                    self.quote_pending = false;
                    if b == b'"' {
                        continue;
                    }
                    self.in_quotes = false;
                    self.plain(b);
                } else if b == b'"' {
                    self.quote_pending = true;
                }
            } else if b == b'"' && !self.mid_field {
                self.in_quotes = true;
                self.mid_field = true;
            } else {
                self.plain(b);
            }
        }
    }

    fn plain(&mut self, b: u8) {
        self.mid_field = !matches!(b, b',' | b'\n' | b'\r');
    }

    /// The row ends inside a quoted field (its newline is part of a value).
    pub(crate) fn open(&self) -> bool {
        self.in_quotes && !self.quote_pending
    }
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
        let mut h = CsvHeader::Unread;
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
        let mut h = CsvHeader::Unread;
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
        let open = |text: &[u8]| {
            let mut r = CsvRow::default();
            r.feed(text);
            r.open()
        };
        assert!(open(b"1,\"a\n"));
        assert!(!open(b"1,\"a\"\"b\"\n"));
        // A quote inside an unquoted field is a plain character.
        assert!(!open(b"1,5'10\"\n"));
        assert!(open(b"1,\"x\"\"\n"));
        assert!(!open(b"\"a\"b,\"c\n\"\n"));
        assert!(matches!(
            parse_line(Format::Csv, b"1,a\r2,b", &mut CsvHeader::Good(vec!["x".into(), "y".into()])),
            Parsed::Invalid(e) if e.contains("more than one CSV row")
        ));
    }

    #[test]
    fn a_header_naming_a_column_twice_is_refused_and_so_are_its_rows() {
        let mut h = CsvHeader::Unread;
        match parse_line(Format::Csv, b"id,v,id", &mut h) {
            Parsed::Invalid(e) => assert_eq!(e, "the CSV header names \"id\" more than once"),
            _ => panic!("a duplicate header name is an error"),
        }
        match parse_line(Format::Csv, b"1,2,3", &mut h) {
            Parsed::Invalid(e) => assert!(e.contains("header was refused"), "{e}"),
            _ => panic!("rows under a bad header are bad records"),
        }
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
