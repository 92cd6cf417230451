//! Watching the pipeline files: file events become reload requests, one per
//! burst (an editor's save in several writes is one change).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Quiet time after the last event of a burst before the reload.
const SETTLE: Duration = Duration::from_millis(300);
/// A burst that never settles is reloaded this long after its first event,
/// so a change is applied within 2 seconds whatever keeps writing.
const AT_MOST: Duration = Duration::from_millis(1500);

/// Watches while it lives.
pub struct FileWatcher {
    _inner: RecommendedWatcher,
}

/// Watches `paths` as `ferry run` was given them — a folder's `*.yaml` and
/// `*.yml` files (not recursively), a file by itself — and sends on
/// `requests` once a burst of changes has settled. A file is watched
/// through its folder: an editor that saves by writing a new file and
/// renaming it over the old would end a watch on the file itself. Must be
/// called within a tokio runtime.
pub fn watch(paths: &[PathBuf], requests: mpsc::Sender<()>) -> Result<FileWatcher, notify::Error> {
    let wanted = Wanted::new(paths);
    // One slot: events while a burst is pending are one burst.
    let (events_tx, events) = mpsc::channel::<()>(1);
    let mut inner =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if changes(&event.kind) && event.paths.iter().any(|p| wanted.covers(p)) => {
                let _ = events_tx.try_send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("watching the pipeline files: {e}"),
        })?;
    let mut folders: Vec<PathBuf> = paths.iter().map(|p| folder_of(p)).collect();
    folders.sort();
    folders.dedup();
    for folder in &folders {
        inner.watch(folder, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(settle(events, requests));
    Ok(FileWatcher { _inner: inner })
}

/// Whether an event can change what a file says (ferry's own reading of
/// the files opens them: that is not a change).
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// One request per burst of events: SETTLE after its last, at most AT_MOST
/// after its first. Ends when the watcher or the receiver is gone.
async fn settle(mut events: mpsc::Receiver<()>, requests: mpsc::Sender<()>) {
    while events.recv().await.is_some() {
        let deadline = tokio::time::Instant::now() + AT_MOST;
        loop {
            let quiet = tokio::time::sleep(SETTLE);
            tokio::select! {
                more = events.recv() => {
                    if more.is_none() {
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                _ = quiet => break,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if requests.send(()).await.is_err() {
            return;
        }
    }
}

/// The folder to watch for a path given on the command line.
fn folder_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_path_buf();
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Which paths in the watched folders are pipeline files.
struct Wanted {
    files: Vec<PathBuf>,
    folders: Vec<PathBuf>,
}

impl Wanted {
    fn new(paths: &[PathBuf]) -> Wanted {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let (folders, files): (Vec<&PathBuf>, Vec<&PathBuf>) =
            paths.iter().partition(|p| p.is_dir());
        Wanted {
            files: files.into_iter().map(|p| absolute(p)).collect(),
            folders: folders.into_iter().map(|p| absolute(p)).collect(),
        }
    }

    /// Events come with absolute paths.
    fn covers(&self, path: &Path) -> bool {
        if self.files.iter().any(|f| f == path) {
            return true;
        }
        let pipeline_file = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        pipeline_file
            && path
                .parent()
                .is_some_and(|parent| self.folders.iter().any(|f| f == parent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_edit_in_several_writes_is_one_reload_and_reads_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "name: a\n").unwrap();
        let (tx, mut requests) = mpsc::channel(4);
        let _watcher = watch(&[dir.path().to_path_buf()], tx).unwrap();
        for part in ["name: b\n", "source: {}\n", "sink: {}\n"] {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            f.write_all(part.as_bytes()).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        std::fs::write(dir.path().join("notes.txt"), "not a pipeline").unwrap();
        tokio::time::timeout(Duration::from_secs(2), requests.recv())
            .await
            .expect("a reload within 2 s")
            .unwrap();
        // Reading the file, and writing a file that is no pipeline's, ask
        // for nothing.
        std::fs::read_to_string(&file).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "still not").unwrap();
        let more = tokio::time::timeout(SETTLE * 3, requests.recv()).await;
        assert!(more.is_err(), "one burst, one reload");
    }
}
