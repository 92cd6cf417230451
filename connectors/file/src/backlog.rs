//! The file source's lag: the bytes of each matching file past its
//! committed offset (a file not yet read: all of it).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use async_trait::async_trait;
use ferry_api::{Backlog, ConnectorError, Lag, Positions};

use crate::paths::Glob;
use crate::source::partition_key;

pub(crate) struct FileBacklog {
    pub(crate) glob: Glob,
    /// The pipeline's own outputs, which the source does not read.
    pub(crate) writes: Vec<PathBuf>,
}

#[async_trait]
impl Backlog for FileBacklog {
    async fn measure(&mut self, committed: &Positions) -> Result<Vec<Lag>, ConnectorError> {
        let (glob, writes, committed) = (self.glob.clone(), self.writes.clone(), committed.clone());
        tokio::task::spawn_blocking(move || {
            let mut lags = Vec::new();
            for path in glob.matches() {
                if writes.iter().any(|w| w == &path) {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue; // gone since it was listed
                };
                if !meta.is_file() {
                    continue;
                }
                let key = partition_key((meta.dev(), meta.ino()));
                let done = committed
                    .get(&key)
                    .and_then(|p| p.offset.as_u64())
                    .unwrap_or(0);
                lags.push(Lag {
                    partition: key,
                    label: path.display().to_string(),
                    amount: meta.len().saturating_sub(done) as f64,
                    unit: "bytes",
                    estimate: false,
                });
            }
            lags
        })
        .await
        .map_err(|e| ConnectorError::Fatal(format!("measuring the lag: {e}")))
    }
}
