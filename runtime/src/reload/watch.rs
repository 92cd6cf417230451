//! Watching the pipeline files: file events become reload requests, one per
//! burst (an editor's save in several writes is one change).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    // Events inotify reported: the poll stays quiet about what they cover.
    let heard = Arc::new(AtomicU64::new(0));
    tokio::spawn(poll(paths.to_vec(), events_tx.clone(), heard.clone()));
    let mut inner =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if changes(&event.kind) && event.paths.iter().any(|p| wanted.covers(p)) => {
                heard.fetch_add(1, Ordering::SeqCst);
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

/// How often the files are also looked at (their size, time and inode,
/// through links): inotify does not see a folder replaced by another (a
/// deploy's `mv`, a release symlink switched, a Kubernetes ConfigMap's
/// `..data` link) nor a linked file's target change.
const POLL: Duration = Duration::from_secs(1);

/// Asks for a reload when what the files look like changes.
async fn poll(paths: Vec<PathBuf>, events: mpsc::Sender<()>, heard: Arc<AtomicU64>) {
    let mut last: Option<Vec<Seen>> = None;
    let mut heard_before = heard.load(Ordering::SeqCst);
    let mut every = tokio::time::interval(POLL);
    while !events.is_closed() {
        every.tick().await;
        let paths = paths.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || look(&paths)).await else {
            continue;
        };
        let heard_now = heard.load(Ordering::SeqCst);
        let unheard = heard_now == heard_before;
        if unheard && last.as_ref().is_some_and(|l| *l != now) {
            let _ = events.try_send(());
        }
        heard_before = heard_now;
        last = Some(now);
    }
}

/// One path as the poll saw it: (path, inode, length, modified).
type Seen = (PathBuf, u64, u64, Option<std::time::SystemTime>);

fn look(paths: &[PathBuf]) -> Vec<Seen> {
    use std::os::unix::fs::MetadataExt;
    let seen = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => (p.to_path_buf(), m.ino(), m.len(), m.modified().ok()),
        Err(_) => (p.to_path_buf(), 0, 0, None),
    };
    let mut out = Vec::new();
    for path in paths {
        out.push(seen(path));
        if let Ok(entries) = std::fs::read_dir(path) {
            // Only what could be a pipeline file: outputs written beside
            // them must not make the poll reload every second.
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| is_pipeline_name(f))
                .collect();
            files.sort();
            out.extend(files.iter().map(|f| seen(f)));
        }
    }
    out
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

/// A `*.yaml` or `*.yml` name, not hidden (as `expand_paths` reads them).
fn is_pipeline_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        )
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
        is_pipeline_name(path)
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
