//! # ferry-fuzz — what the fuzz targets check
//!
//! Each function takes any bytes and panics only when ferry misbehaves:
//!
//! * [`config`] — any text as a pipeline file: the loader returns a
//!   pipeline or errors with locations, never panics or hangs.
//! * [`file_source`] — any bytes as the content of a file read by the file
//!   source (JSON lines, CSV, text) under `--once`: it ends, never panics,
//!   and every position moves forward and stays inside the file.
//! * [`payload`] — any bytes as a Kafka message's JSON text: the check that
//!   [`ferry_api::Payload::from_json`] makes agrees exactly with parsing the
//!   text into a value, so a payload that passed can always be used.
//!
//! libFuzzer runs them from `fuzz/libfuzzer` (see its README); `cargo test`
//! runs them over `fuzz/corpus` (seeds, and every input that ever failed)
//! and a few seconds of random mutations.

use std::io::Write;
use std::path::Path;

use ferry_api::{Payload, SourceItem, Value};
use ferry_connector_file::Format;

/// Any text as a pipeline file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let registry = ferry::registry::Registry::builtin();
    let env = |name: &str| (name == "FUZZ").then(|| "value".to_string());
    if let Err(errors) = ferry::config::load_str(Path::new("fuzz.yaml"), text, &registry, &env) {
        assert!(!errors.0.is_empty(), "an error result with no error");
        for e in &errors.0 {
            assert!(e.loc.line >= 1 && e.loc.column >= 1, "{e}");
        }
    }
}

/// Any bytes as a file that the file source reads to its end.
pub fn file_source(format: Format, data: &[u8]) {
    let dir = tempfile::tempdir_in(scratch()).expect("a scratch folder");
    let path = dir.path().join("input");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("writing the input");
    // A small line limit, so over-long lines and rows are reached too.
    let items = ferry_connector_file::read_whole_file(&path, format, 64)
        .unwrap_or_else(|e| panic!("reading a plain file failed: {e}"));
    let mut last = 0u64;
    for item in &items {
        let at = item
            .position()
            .offset
            .as_u64()
            .expect("a file position is a byte offset");
        assert!(at > last, "positions must move forward: {at} after {last}");
        assert!(
            at <= data.len() as u64,
            "position {at} past the end ({})",
            data.len()
        );
        last = at;
        if let (SourceItem::Record(r), Format::Json) = (item, format) {
            assert!(r.value.is_object(), "a JSON-lines record is an object");
        }
    }
    if format == Format::Csv {
        same_rows_as_the_csv_crate(data, &items);
    }
}

/// Where the whole input is plain CSV the csv crate reads in one go (every
/// row short, every quote closed, newline endings), ferry's items are
/// exactly its rows: each a record (as many fields as the header) or a bad
/// record (any other count) — none missing, none merged. This is what
/// caught rows lost behind a quote inside an unquoted field.
fn same_rows_as_the_csv_crate(data: &[u8], items: &[SourceItem]) {
    if !data.ends_with(b"\n") || data.contains(&b'\r') || data.starts_with(b"\xEF\xBB\xBF") {
        return;
    }
    if data.split(|&b| b == b'\n').any(|line| line.len() > 64) {
        return;
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    for row in reader.records() {
        match row {
            Ok(r) => {
                starts.push(r.position().map_or(0, |p| p.byte() as usize));
                rows.push(r.iter().map(str::to_string).collect());
            }
            Err(_) => return, // not plain: covered by the checks above
        }
    }
    starts.push(data.len());
    // A row spanning lines must fit the line limit as a whole too; and a
    // quote left open at the end (the last row runs to the end of the
    // input) is the cut rule's business, not plain CSV.
    if starts.windows(2).any(|w| w[1] - w[0] > 65) {
        return;
    }
    if ends_inside_quotes(data) {
        return;
    }
    let Some((header, rows)) = rows.split_first() else {
        return;
    };
    let unique = header
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
        == header.len();
    let got: Vec<Option<Vec<String>>> = items
        .iter()
        .map(|i| match i {
            SourceItem::Record(r) => Some(
                header
                    .iter()
                    .map(|k| r.value[k.as_str()].as_str().unwrap_or("?").to_string())
                    .collect(),
            ),
            SourceItem::Invalid(_) => None,
        })
        .collect();
    let want: Vec<Option<Vec<String>>> = std::iter::once(None)
        .filter(|_| !unique)
        .chain(
            rows.iter()
                .map(|r| (unique && r.len() == header.len()).then(|| r.clone())),
        )
        .collect();
    assert_eq!(got, want, "ferry's rows differ from the csv crate's");
}

/// Any bytes as a message's JSON text.
pub fn payload(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = serde_json::from_str::<Value>(text);
    match Payload::json(text) {
        Ok(p) => {
            let value = parsed
                .unwrap_or_else(|e| panic!("the check passed {text:?}, the parse refused it: {e}"));
            // Every way a sink uses a payload.
            assert_eq!(*p, value);
            let mut out = Vec::new();
            p.write_json(&mut out);
            let again: Value = serde_json::from_slice(&out).expect("written JSON parses");
            assert_eq!(again, value);
            serde_json::to_string(&p).expect("a payload serializes");
            assert_eq!(p.into_value(), value);
        }
        Err(_) => assert!(parsed.is_err(), "the check refused {text:?}, which parses"),
    }
}

/// Whether the csv crate ends `data` inside a quoted field: a row added
/// after it is then swallowed by that field instead of read as a row.
fn ends_inside_quotes(data: &[u8]) -> bool {
    let mut probe = data.to_vec();
    probe.extend_from_slice(b"sentinel-row\n");
    let last = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&probe[..])
        .records()
        .filter_map(Result::ok)
        .last();
    !last.is_some_and(|r| r.len() == 1 && &r[0] == "sentinel-row")
}

/// Where inputs are written: memory when the machine has it.
fn scratch() -> &'static Path {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm } else { Path::new("/tmp") }
}
