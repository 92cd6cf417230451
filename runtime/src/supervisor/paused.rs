//! A pipeline's paused mark, kept in the data folder so that a pause
//! outlasts a restart of ferry: `<data-dir>/paused/<pipeline>`.

use std::io;
use std::path::{Path, PathBuf};

fn mark(data_dir: &Path, pipeline: &str) -> PathBuf {
    data_dir.join("paused").join(pipeline)
}

/// Whether the pipeline was left paused.
pub(crate) async fn is_paused(data_dir: &Path, pipeline: &str) -> bool {
    tokio::fs::try_exists(mark(data_dir, pipeline))
        .await
        .unwrap_or(false)
}

/// Sets or clears the mark, durably (the folder is synced), off the async
/// workers.
pub(crate) async fn set_paused(data_dir: &Path, pipeline: &str, paused: bool) -> io::Result<()> {
    let path = mark(data_dir, pipeline);
    tokio::task::spawn_blocking(move || {
        let folder = path.parent().expect("a mark is in a folder");
        if paused {
            std::fs::create_dir_all(folder)?;
            std::fs::File::create(&path)?.sync_all()?;
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => other?,
            }
        }
        std::fs::File::open(folder)?.sync_all()
    })
    .await
    .map_err(io::Error::other)?
}
