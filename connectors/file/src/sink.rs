//! The file sink: appends, and in transactional mode commits the output's
//! length and the source positions together in one atomic manifest.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ferry_api::{ConnectorError, Positions, Record, Rejected, Sink, Value};
use ferry_connector_kit::fs::write_atomically;
use serde::{Deserialize, Serialize};

use crate::format::{write_csv_row, write_record};
use crate::{FileSinkConfig, Format};

const MANIFEST_VERSION: u32 = 1;

/// What `<path>.ferry-manifest` holds. `length` bytes of the output are
/// committed and cover exactly the records up to `positions`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    pipeline: String,
    length: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    columns: Option<Vec<String>>,
    positions: Positions,
}

#[derive(Clone)]
pub(crate) struct FileSink {
    config: FileSinkConfig,
    pipeline: String,
    manifest_path: PathBuf,
    // An Arc so the fsync can run on the blocking pool while we keep the handle.
    file: Option<Arc<File>>,
    /// Bytes written so far (committed + the batch being written).
    written_len: u64,
    columns: Option<Vec<String>>,
    buf: Vec<u8>,
}

impl FileSink {
    pub(crate) fn new(config: FileSinkConfig, pipeline: String) -> Self {
        let mut manifest = config.path.clone().into_os_string();
        manifest.push(".ferry-manifest");
        FileSink {
            columns: config.columns.clone(),
            config,
            pipeline,
            manifest_path: PathBuf::from(manifest),
            file: None,
            written_len: 0,
            buf: Vec::new(),
        }
    }

    fn path_err(&self, what: &str, e: io::Error) -> ConnectorError {
        ConnectorError::io(format!("{what} {}", self.config.path.display()), e)
    }

    /// The manifest saying `length` bytes are committed and reach `positions`.
    fn manifest(&self, length: u64, positions: &Positions) -> Vec<u8> {
        let m = Manifest {
            version: MANIFEST_VERSION,
            pipeline: self.pipeline.clone(),
            length,
            columns: self.columns.clone(),
            positions: positions.clone(),
        };
        serde_json::to_vec(&m).expect("manifest serializes")
    }

    fn read_manifest(&self) -> Result<Option<Manifest>, ConnectorError> {
        let bytes = match fs::read(&self.manifest_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ConnectorError::io(
                    format!("reading {}", self.manifest_path.display()),
                    e,
                ));
            }
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            ConnectorError::Fatal(format!(
                "{} is not a ferry manifest ({e}); move it away to start the output afresh",
                self.manifest_path.display()
            ))
        })?;
        if m.version != MANIFEST_VERSION {
            return Err(ConnectorError::Fatal(format!(
                "{} has version {}, this ferry reads version {MANIFEST_VERSION}",
                self.manifest_path.display(),
                m.version
            )));
        }
        if m.pipeline != self.pipeline {
            return Err(ConnectorError::Fatal(format!(
                "{} is the output of pipeline {:?}, not {:?}: two pipelines must not share an output file",
                self.config.path.display(),
                m.pipeline,
                self.pipeline
            )));
        }
        Ok(Some(m))
    }
}

impl FileSink {
    /// `open`, on a blocking thread: opening, locking, repairing and
    /// truncating the output and writing the first manifest are file
    /// system calls and fsyncs, not for the async workers.
    fn open_blocking(&mut self) -> Result<Option<Positions>, ConnectorError> {
        let dir = ferry_connector_kit::fs::parent_dir(&self.config.path);
        fs::create_dir_all(dir)
            .map_err(|e| ConnectorError::io(format!("creating {}", dir.display()), e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.config.path)
            .map_err(|e| self.path_err("opening", e))?;
        lock_output(&file, &self.config.path)?;
        let mut len = file.metadata().map_err(|e| self.path_err("stat", e))?.len();
        if !self.config.transactional {
            len = cut_torn_tail(&file, len, self.config.format, &self.config.path)
                .map_err(|e| self.path_err("repairing", e))?;
        }
        let mut positions = None;
        // Bytes of the output that are durable and covered by the manifest.
        let mut committed_len = len;
        if self.config.transactional {
            positions = Some(Positions::new());
            if let Some(m) = self.read_manifest()? {
                if len < m.length {
                    return Err(ConnectorError::Fatal(format!(
                        "{} is {len} bytes but {} bytes were committed to it: it was truncated or replaced; \
                         move both it and {} away to start afresh",
                        self.config.path.display(),
                        m.length,
                        self.manifest_path.display()
                    )));
                }
                if len > m.length {
                    // Written after the last commit: the source replays these records.
                    tracing::info!(
                        path = %self.config.path.display(),
                        bytes = len - m.length,
                        "discarding output written after the last commit"
                    );
                    file.set_len(m.length)
                        .and_then(|_| file.sync_all())
                        .map_err(|e| self.path_err("truncating", e))?;
                }
                committed_len = m.length;
                if self.columns.is_none() {
                    self.columns = m.columns;
                }
                positions = Some(m.positions);
            } else {
                // First start: record what the output holds before we write
                // anything. Without this, a crash between our first write and
                // our first commit would leave our rows looking like
                // pre-existing content, and the replay would duplicate them.
                write_manifest(&self.manifest_path, &self.manifest(len, &Positions::new()))?;
            }
        }
        self.written_len = committed_len;
        self.file = Some(Arc::new(file));
        Ok(positions)
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        let mut opening = self.clone();
        let (opened, positions) = tokio::task::spawn_blocking(move || {
            let positions = opening.open_blocking();
            (opening, positions)
        })
        .await
        .map_err(|e| ConnectorError::Fatal(format!("opening the file sink panicked: {e}")))?;
        *self = opened;
        positions
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        let file = self.file.clone().expect("write after open");
        self.buf.clear();
        if self.config.format == Format::Csv {
            if self.columns.is_none() {
                self.columns = Some(first_record_columns(batch));
            }
            if self.written_len == 0 {
                write_csv_row(self.columns.clone().unwrap_or_default(), &mut self.buf);
            }
        }
        let columns = self.columns.as_deref().unwrap_or(&[]);
        for record in batch {
            write_record(self.config.format, &record.value, columns, &mut self.buf);
        }
        // The write itself on a blocking thread (page cache, but a slow or
        // full disk blocks it); the buffer goes along and comes back.
        let (buf, at) = (std::mem::take(&mut self.buf), self.written_len);
        let (buf, written) = tokio::task::spawn_blocking(move || {
            let written = file.write_all_at(&buf, at).inspect_err(|_| {
                // A full disk takes part of the batch: cut it off again, so
                // the replay after the retry appends whole lines, never onto
                // half a line. Should even that fail, the next open cuts it.
                let _ = file.set_len(at);
            });
            (buf, written)
        })
        .await
        .map_err(|e| ConnectorError::Fatal(format!("writing the file sink panicked: {e}")))?;
        self.buf = buf;
        written.map_err(|e| self.path_err("writing", e))?;
        self.written_len += self.buf.len() as u64;
        Ok(Vec::new())
    }

    async fn commit(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        let file = self.file.clone().expect("commit after open");
        let manifest = self
            .config
            .transactional
            .then(|| self.manifest(self.written_len, positions));
        let manifest_path = self.manifest_path.clone();
        let path = self.config.path.clone();
        // Data first, then the manifest that points past it: a crash between
        // the two leaves data beyond the manifest, which open() cuts away.
        tokio::task::spawn_blocking(move || -> Result<(), ConnectorError> {
            file.sync_data()
                .map_err(|e| ConnectorError::io(format!("fsync {}", path.display()), e))?;
            match manifest {
                Some(bytes) => write_manifest(&manifest_path, &bytes),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| ConnectorError::Fatal(format!("file sink commit panicked: {e}")))?
    }

    /// Every manifest of this pipeline in the output's directory: when
    /// several ferry processes share a Kafka group and write their outputs
    /// side by side (`path: out/orders-${HOSTNAME}.jsonl`), a partition
    /// moving to this process resumes where the previous owner's output
    /// ends, even if that owner died before committing to the group.
    async fn shared_positions(&mut self) -> Result<Vec<Positions>, ConnectorError> {
        if !self.config.transactional {
            return Ok(Vec::new());
        }
        let dir = ferry_connector_kit::fs::parent_dir(&self.config.path).to_path_buf();
        let pipeline = self.pipeline.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<Positions>, ConnectorError> {
            let entries = fs::read_dir(&dir)
                .map_err(|e| ConnectorError::io(format!("listing {}", dir.display()), e))?;
            let mut found = Vec::new();
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.to_string_lossy().ends_with(".ferry-manifest") {
                    continue;
                }
                // Another pipeline's manifest, or one being replaced right
                // now: not ours to read.
                let Ok(bytes) = fs::read(&path) else { continue };
                match serde_json::from_slice::<Manifest>(&bytes) {
                    Ok(m) if m.pipeline == pipeline => found.push(m.positions),
                    _ => {}
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| ConnectorError::Fatal(format!("reading manifests panicked: {e}")))?
    }
}

/// Takes an exclusive lock on the output for as long as the sink has it
/// open: two pipelines (or two ferry processes, or one pipeline under two
/// data folders) writing one file would interleave and cut each other's
/// lines. The OS drops the lock when the file is closed or the process dies.
fn lock_output(file: &File, path: &Path) -> Result<(), ConnectorError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(ConnectorError::Fatal(format!(
            "{} is already being written by another pipeline or ferry process (it holds the \
             file's lock): two writers of one output would corrupt it; give each pipeline a \
             sink path of its own",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(ConnectorError::io(format!("locking {}", path.display()), e))
        }
    }
}

/// Without a manifest nothing says how much of the output is whole, but
/// every record ends with a newline: bytes after the last one are part of a
/// write that was cut short (a full disk, a crash). They are cut away, so
/// the replay (at-least-once) appends whole lines. A CSV row may hold
/// newlines inside quotes, so there the file is read from its start to find
/// where the last whole row ends. Returns the new length.
fn cut_torn_tail(file: &File, len: u64, format: Format, path: &Path) -> io::Result<u64> {
    let end = match format {
        Format::Csv => last_csv_row_end(file, len)?,
        Format::Json | Format::Text => last_line_end(file, len)?,
    };
    if end < len {
        tracing::warn!(
            path = %path.display(),
            bytes = len - end,
            "the output ends with {} bytes of a record cut short (by a full disk or a crash \
             during a write, or by hand); cutting them away: a record whose write was cut \
             short is written again",
            len - end
        );
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(end)
}

/// The offset just past the last newline (0 if none).
fn last_line_end(file: &File, len: u64) -> io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The offset just past the last newline that ends a CSV row (one not
/// inside a quoted field), read from the start of the file.
fn last_csv_row_end(file: &File, len: u64) -> io::Result<u64> {
    let mut row = crate::format::CsvRow::default();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut at, mut end) = (0u64, 0u64);
    while at < len {
        let n = buf.len().min((len - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        for (i, &b) in buf[..n].iter().enumerate() {
            row.feed(&[b]);
            if b == b'\n' && !row.open() {
                end = at + i as u64 + 1;
            }
        }
        at += n as u64;
    }
    Ok(end)
}

fn write_manifest(path: &Path, bytes: &[u8]) -> Result<(), ConnectorError> {
    write_atomically(path, bytes)
        .map_err(|e| ConnectorError::io(format!("writing {}", path.display()), e))
}

fn first_record_columns(batch: &[Record]) -> Vec<String> {
    match batch.first().map(|r| &*r.value) {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => vec!["value".to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{Partition, Position};
    use serde_json::json;

    fn record(n: u64) -> Record {
        let partition = Arc::new(Partition::new("p"));
        Record::new(
            json!({"n": n}),
            Position {
                partition,
                offset: json!(n),
            },
        )
    }

    fn positions_to(n: u64) -> Positions {
        let mut p = Positions::new();
        p.advance(&record(n).position);
        p
    }

    fn sink(path: PathBuf) -> FileSink {
        FileSink::new(
            FileSinkConfig {
                path,
                format: Format::Json,
                transactional: true,
                columns: None,
            },
            "t".into(),
        )
    }

    /// `transactional: false`, as `format`.
    fn plain_sink(path: PathBuf, format: Format, columns: Option<Vec<String>>) -> FileSink {
        FileSink::new(
            FileSinkConfig {
                path,
                format,
                transactional: false,
                columns,
            },
            "t".into(),
        )
    }

    #[tokio::test]
    async fn uncommitted_output_is_cut_away_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/o.jsonl");
        let mut s = sink(path.clone());
        assert_eq!(s.open().await.unwrap(), Some(Positions::new()));
        s.write(&[record(1), record(2)]).await.unwrap();
        s.commit(&positions_to(2)).await.unwrap();
        s.write(&[record(3)]).await.unwrap(); // crash before commit
        drop(s);

        let mut again = sink(path.clone());
        assert_eq!(again.open().await.unwrap(), Some(positions_to(2)));
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
        again.write(&[record(3)]).await.unwrap();
        again.write(&[record(4)]).await.unwrap(); // several writes, one commit
        again.commit(&positions_to(4)).await.unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n"
        );
    }

    #[tokio::test]
    async fn a_crash_before_the_first_commit_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        fs::write(&path, "{\"before\":1}\n").unwrap(); // output that was there already
        let mut s = sink(path.clone());
        s.open().await.unwrap();
        s.write(&[record(1), record(2)]).await.unwrap();
        drop(s); // killed before the first commit

        let mut again = sink(path.clone());
        assert_eq!(again.open().await.unwrap(), Some(Positions::new()));
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"before\":1}\n");
    }

    #[tokio::test]
    async fn a_line_cut_short_is_cut_away_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        // What a full disk left: a whole record, then half of the next.
        fs::write(&path, "{\"n\":1}\n{\"id\":72").unwrap();
        let mut s = plain_sink(path.clone(), Format::Json, None);
        assert_eq!(s.open().await.unwrap(), None);
        s.write(&[record(2)]).await.unwrap();
        s.commit(&positions_to(2)).await.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
    }

    #[tokio::test]
    async fn a_csv_row_cut_inside_its_quotes_is_cut_away_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        // A row whose quoted value holds newlines, cut after one of them.
        fs::write(&path, "id,v\n1,\"line1\nline2\n").unwrap();
        let mut s = plain_sink(
            path.clone(),
            Format::Csv,
            Some(vec!["id".into(), "v".into()]),
        );
        s.open().await.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "id,v\n");
        s.write(&[Record::new(json!({"id": 3, "v": "c"}), record(3).position)])
            .await
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "id,v\n3,c\n");
    }

    #[tokio::test]
    async fn a_second_writer_of_one_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut first = sink(path.clone());
        first.open().await.unwrap();
        let err = sink(path.clone()).open().await.unwrap_err();
        assert!(!err.is_retriable());
        assert!(
            err.to_string().contains("already being written by another"),
            "{err}"
        );
        drop(first);
        sink(path)
            .open()
            .await
            .expect("free again once the first is gone");
    }

    #[tokio::test]
    async fn another_pipelines_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut s = sink(path.clone());
        s.open().await.unwrap();
        s.write(&[record(1)]).await.unwrap();
        s.commit(&positions_to(1)).await.unwrap();
        drop(s);
        let mut other = FileSink::new(
            FileSinkConfig {
                path,
                format: Format::Json,
                transactional: true,
                columns: None,
            },
            "other".into(),
        );
        let err = other.open().await.unwrap_err().to_string();
        assert!(err.contains("not \"other\""), "{err}");
    }
}
