//! The dead-letter file: one JSON line per record that could not be
//! delivered, with the record, the error, the stage and the source position.
//! It is fsynced before the positions past those records are committed, so a
//! dead-lettered record is never lost; after a crash it may appear twice.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use ferry_api::{ConnectorError, Invalid, Position, Raw, Record, Value};
use serde_json::json;

pub struct DeadLetters {
    path: PathBuf,
    pipeline: String,
    file: Option<Arc<File>>,
}

impl DeadLetters {
    pub fn new(path: PathBuf, pipeline: &str) -> DeadLetters {
        DeadLetters {
            path,
            pipeline: pipeline.to_string(),
            file: None,
        }
    }

    /// An entry for input the source could not parse.
    /// Text input under `raw`; input that is not UTF-8 under `raw_base64`,
    /// its bytes as they came (standard base64), so either can be replayed.
    pub fn invalid(&self, i: &Invalid) -> Value {
        let (field, data) = match &i.raw {
            Raw::Text(text) => ("raw", text.clone()),
            Raw::Bytes(bytes) => (
                "raw_base64",
                base64::engine::general_purpose::STANDARD.encode(bytes),
            ),
        };
        self.entry("source", &i.error, &i.position, field, Value::String(data))
    }

    /// An entry for a record the sink refused.
    pub fn rejected(&self, r: &Record, error: &ConnectorError) -> Value {
        self.entry(
            "sink",
            &error.to_string(),
            &r.position,
            "record",
            r.value.clone().into_value(),
        )
    }

    /// An entry for a record a transform step failed on: the record as
    /// the source gave it, the step's index in `transforms:` and its type.
    pub fn untransformed(&self, r: &Record, f: &crate::transform::Failure) -> Value {
        let mut e = self.entry(
            "transform",
            &f.error,
            &r.position,
            "record",
            r.value.clone().into_value(),
        );
        e["step"] = json!(f.step);
        e["step_type"] = json!(f.kind);
        e
    }

    fn entry(
        &self,
        stage: &str,
        error: &str,
        position: &Position,
        field: &str,
        data: Value,
    ) -> Value {
        let mut e = json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "pipeline": self.pipeline,
            "stage": stage,
            "error": error,
            "position": position,
        });
        e[field] = data;
        e
    }

    /// Appends the entries and fsyncs.
    pub async fn append(&mut self, entries: &[Value]) -> Result<(), ConnectorError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ConnectorError::io(format!("creating {}", dir.display()), e))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| ConnectorError::io(format!("opening {}", self.path.display()), e))?;
            cut_torn_tail(&f)
                .map_err(|e| ConnectorError::io(format!("reading {}", self.path.display()), e))?;
            self.file = Some(Arc::new(f));
        }
        let file = self.file.clone().expect("opened above");
        let mut bytes = Vec::new();
        for e in entries {
            serde_json::to_writer(&mut bytes, e).expect("JSON serializes");
            bytes.push(b'\n');
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            (&*file).write_all(&bytes).and_then(|_| file.sync_data())
        })
        .await
        .map_err(|e| ConnectorError::Fatal(format!("dead-letter writer panicked: {e}")))?
        .map_err(|e| ConnectorError::io(format!("writing {}", path.display()), e))
    }
}

/// A line cut short by a crash mid-append (its batch was not committed, so
/// its entries come again with the replay) is removed, so that the next
/// entries do not continue it into a line that is no JSON.
fn cut_torn_tail(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                f.set_len(keep)?;
            }
            return Ok(());
        }
        end = start;
    }
    if len > 0 {
        f.set_len(0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_torn_by_a_crash_is_cut_before_the_next_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        for (before, after) in [
            ("{\"a\":1}\n{\"b\":", "{\"a\":1}\n"),
            ("{\"a\":1}\n", "{\"a\":1}\n"),
            ("{\"torn", ""),
            ("", ""),
        ] {
            std::fs::write(&path, before).unwrap();
            let f = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .unwrap();
            cut_torn_tail(&f).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), after);
        }
    }
}
