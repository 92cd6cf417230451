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
    if let Err(errors) =
        ferry::config::load_str(Path::new("fuzz.yaml"), text, &registry, &env)
    {
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
        assert!(at <= data.len() as u64, "position {at} past the end ({})", data.len());
        last = at;
        if let (SourceItem::Record(r), Format::Json) = (item, format) {
            assert!(r.value.is_object(), "a JSON-lines record is an object");
        }
    }
}

/// Any bytes as a message's JSON text.
pub fn payload(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = serde_json::from_str::<Value>(text);
    match Payload::json(text) {
        Ok(p) => {
            let value = parsed.unwrap_or_else(|e| {
                panic!("the check passed {text:?}, the parse refused it: {e}")
            });
            // Every way a sink uses a payload.
            assert_eq!(*p, value);
            let mut out = Vec::new();
            p.write_json(&mut out);
            let again: Value = serde_json::from_slice(&out).expect("written JSON parses");
            assert_eq!(again, value);
            serde_json::to_string(&p).expect("a payload serializes");
            assert_eq!(p.into_value(), value);
        }
        Err(_) => assert!(
            parsed.is_err(),
            "the check refused {text:?}, which parses"
        ),
    }
}

/// Where inputs are written: memory when the machine has it.
fn scratch() -> &'static Path {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm } else { Path::new("/tmp") }
}
