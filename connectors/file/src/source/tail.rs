//! The set of files a source follows.

use super::*;

/// The blocking state of the source: every followed file.
pub(super) struct Tail {
    pub(super) glob: Glob,
    pub(super) format: Format,
    pub(super) max_line_bytes: usize,
    pub(super) once: bool,
    pub(super) writes: Vec<PathBuf>,
    /// What was committed when the pipeline started: where known files resume.
    pub(super) committed: Positions,
    pub(super) files: Vec<Tailed>,
    pub(super) next_scan: Instant,
    /// Round-robin start, so one busy file cannot starve the others.
    pub(super) next_file: usize,
}

impl Tail {
    pub(super) fn read_batch(
        &mut self,
        max: usize,
        rescan: bool,
    ) -> Result<Vec<SourceItem>, ConnectorError> {
        if rescan || Instant::now() >= self.next_scan {
            self.scan()?;
            self.next_scan = Instant::now() + RESCAN_EVERY;
        }
        let mut out = Vec::with_capacity(max.min(4096));
        let n = self.files.len();
        for k in 0..n {
            if out.len() >= max {
                break;
            }
            let i = (self.next_file + k) % n;
            let (format, max_line, once) = (self.format, self.max_line_bytes, self.once);
            self.files[i].read_into(&mut out, max, format, max_line, once)?;
        }
        self.next_file = if n == 0 { 0 } else { (self.next_file + 1) % n };
        self.files.retain(|f| {
            let done = f.at_eof && f.gone_since.is_some_and(|t| t.elapsed() > GONE_GRACE);
            if done {
                tracing::debug!(path = %f.path.display(), "stopped following a file that is gone");
            }
            !done
        });
        Ok(out)
    }

    /// Matches the glob and starts following new files; marks vanished ones.
    pub(super) fn scan(&mut self) -> Result<(), ConnectorError> {
        let mut seen = HashSet::new();
        // The pipeline's own outputs by device and inode: a symbolic link,
        // a hard link or another spelling of the path leads to the same.
        let own: Vec<((u64, u64), &PathBuf)> = self
            .writes
            .iter()
            .filter_map(|w| fs::metadata(w).ok().map(|m| ((m.dev(), m.ino()), w)))
            .collect();
        for path in self.glob.matches() {
            let meta = match fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Raced with a delete or rename: the next scan sees the truth.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ConnectorError::io(format!("stat {}", path.display()), e)),
            };
            let id = (meta.dev(), meta.ino());
            if let Some((_, written)) = own.iter().find(|(o, _)| *o == id) {
                return Err(ConnectorError::Fatal(format!(
                    "the source's path matches {}, which is {} written by this pipeline: it \
                     would read its own output back forever; change the source's path or the \
                     output's",
                    path.display(),
                    written.display()
                )));
            }
            seen.insert(id);
            if let Some(f) = self.files.iter_mut().find(|f| f.id == id) {
                f.gone_since = None;
                if f.path != path {
                    tracing::info!(from = %f.path.display(), to = %path.display(), "file renamed; following it under its new name");
                    f.path = path;
                    f.refresh_partition();
                }
                continue;
            }
            match Tailed::open(
                path.clone(),
                id,
                &self.committed,
                self.format,
                self.max_line_bytes,
            ) {
                Ok(f) => self.files.push(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ConnectorError::io(format!("opening {}", path.display()), e)),
            }
        }
        let now = Instant::now();
        for f in &mut self.files {
            if !seen.contains(&f.id) && f.gone_since.is_none() {
                f.gone_since = Some(now);
            }
        }
        Ok(())
    }
}
