//! The embedded offset store: one small JSON file per pipeline under
//! `<data-dir>/offsets/`, replaced atomically (temp file → fsync → rename).
//!
//! For a sink that keeps positions itself (transactional) the file is only a
//! mirror for `ferry offsets list`, written without fsync; the sink's copy is
//! the truth. Otherwise this file is the truth, and it is written only after
//! the sink made the records it covers durable.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ferry_api::Positions;
use ferry_connector_kit::fs::write_atomically;
use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

/// What is stored for one pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredOffsets {
    pub version: u32,
    pub pipeline: String,
    /// The sink keeps the authoritative copy of these positions.
    #[serde(default)]
    pub kept_by_sink: bool,
    /// Set by an operator (`ferry offsets reset`, the API's offsets
    /// DELETE and PUT): the next start begins from `positions`, whatever
    /// the sink holds. Cleared by the first commit after it.
    #[serde(default)]
    pub reset: bool,
    pub updated: String,
    pub positions: Positions,
    /// The latest operator choice (reset or set), by a number of its own:
    /// a sink that keeps its positions stores it with them
    /// (`engine/resume.rs`), which tells a start whether the sink has
    /// committed since the choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum OffsetStoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a ferry offsets file ({message})")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Debug, Clone)]
pub struct OffsetStore {
    dir: PathBuf,
}

impl OffsetStore {
    pub fn new(data_dir: &Path) -> OffsetStore {
        OffsetStore {
            dir: data_dir.join("offsets"),
        }
    }

    fn path(&self, pipeline: &str) -> PathBuf {
        self.dir.join(format!("{pipeline}.json"))
    }

    pub fn load(&self, pipeline: &str) -> Result<Option<StoredOffsets>, OffsetStoreError> {
        read(&self.path(pipeline))
    }

    /// Stores `positions`. Fsynced when the store is the truth (not
    /// `kept_by_sink`) or when `durable` asks for it (the first save after a
    /// reset, which must not come back after a power cut); otherwise a cheap
    /// mirror of what the sink keeps.
    pub fn save(
        &self,
        pipeline: &str,
        positions: &Positions,
        kept_by_sink: bool,
        durable: bool,
        choice: Option<u64>,
    ) -> Result<(), OffsetStoreError> {
        let entry = StoredOffsets {
            version: VERSION,
            pipeline: pipeline.to_string(),
            kept_by_sink,
            reset: false,
            updated: now(),
            positions: positions.clone(),
            choice,
        };
        let path = self.path(pipeline);
        let bytes = serde_json::to_vec_pretty(&entry).expect("offsets serialize");
        let result = if kept_by_sink && !durable {
            fs::create_dir_all(&self.dir).and_then(|_| {
                let tmp = path.with_extension("json.tmp");
                fs::write(&tmp, &bytes)?;
                fs::rename(&tmp, &path)
            })
        } else {
            write_atomically(&path, &bytes)
        };
        result.map_err(|source| OffsetStoreError::Io { path, source })
    }

    /// Every pipeline with stored offsets, by name.
    pub fn list(&self) -> Result<Vec<StoredOffsets>, OffsetStoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(OffsetStoreError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| OffsetStoreError::Io {
                    path: self.dir.clone(),
                    source,
                })?
                .path();
            if path.extension().and_then(|e| e.to_str()) == Some("json")
                && let Some(o) = read(&path)?
            {
                out.push(o);
            }
        }
        out.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
        Ok(out)
    }

    /// Makes the next start of `pipeline` begin from the start of its source.
    /// Returns false if nothing was stored for it.
    pub fn reset(&self, pipeline: &str) -> Result<bool, OffsetStoreError> {
        if self.load(pipeline)?.is_none() {
            return Ok(false);
        }
        self.choose(pipeline, Positions::new())?;
        Ok(true)
    }

    /// Makes the next start of `pipeline` begin from `positions` (an
    /// operator's choice), whatever its sink holds.
    pub fn choose(&self, pipeline: &str, positions: Positions) -> Result<(), OffsetStoreError> {
        let kept_by_sink = self.load(pipeline)?.is_some_and(|e| e.kept_by_sink);
        self.write(&StoredOffsets {
            version: VERSION,
            pipeline: pipeline.to_string(),
            kept_by_sink,
            reset: true,
            updated: now(),
            positions,
            // Told apart from every other choice.
            choice: Some(fastrand::u64(1..)),
        })
    }

    /// Stores `entry` as it is, durably.
    pub fn write(&self, entry: &StoredOffsets) -> Result<(), OffsetStoreError> {
        let path = self.path(&entry.pipeline);
        write_atomically(
            &path,
            &serde_json::to_vec_pretty(entry).expect("offsets serialize"),
        )
        .map_err(|source| OffsetStoreError::Io { path, source })
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn read(path: &Path) -> Result<Option<StoredOffsets>, OffsetStoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OffsetStoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let entry: StoredOffsets =
        serde_json::from_slice(&bytes).map_err(|e| OffsetStoreError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if entry.version != VERSION {
        return Err(OffsetStoreError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "version {} (this ferry reads version {VERSION})",
                entry.version
            ),
        });
    }
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{Partition, Position};
    use std::sync::Arc;

    #[test]
    fn save_load_list_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::new(dir.path());
        assert!(store.load("p").unwrap().is_none());
        let mut positions = Positions::new();
        positions.advance(&Position {
            partition: Arc::new(Partition::new("k")),
            offset: 42.into(),
        });
        store.save("p", &positions, false, true, None).unwrap();
        assert_eq!(store.load("p").unwrap().unwrap().positions, positions);
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.reset("p").unwrap());
        let after = store.load("p").unwrap().unwrap();
        assert!(after.reset && after.positions.is_empty());
        assert!(!store.reset("nope").unwrap());
    }
}
