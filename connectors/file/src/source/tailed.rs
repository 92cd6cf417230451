//! One followed file.

use super::*;

/// One followed file.
pub(super) struct Tailed {
    pub(super) id: (u64, u64),
    pub(super) path: PathBuf,
    pub(super) reader: BufReader<File>,
    /// Offset just past the last complete line handed out (or skipped).
    pub(super) pos: u64,
    /// Bytes after `pos` read so far of a line whose newline has not come yet
    /// (for CSV: of a row, which may span lines inside a quoted field).
    pub(super) pending: Vec<u8>,
    /// Bytes of an over-long line already dropped from `pending`.
    pub(super) dropped: u64,
    /// Hash and length of the first bytes of the file; known once line 1 is complete.
    pub(super) fingerprint: Option<(u64, usize)>,
    pub(super) partition: Option<Arc<Partition>>,
    pub(super) csv_header: CsvHeader,
    /// CSV: where the row in `pending` stands (inside a quoted field or
    /// not), fed piece by piece as it grows.
    pub(super) csv_row: CsvRow,
    /// CSV: the length of the first line of `pending` once a row has gone on
    /// past it inside a quoted field. Should the field never close, only
    /// this line is lost: it becomes a bad record, and reading resumes
    /// right after it.
    pub(super) first_newline: Option<usize>,
    /// `--once`: the length of an unterminated last line already warned about.
    pub(super) warned_unterminated: Option<usize>,
    pub(super) at_eof: bool,
    pub(super) gone_since: Option<Instant>,
}

impl Tailed {
    /// Opens a newly matched file at its committed position when the
    /// committed partition is this very file, else at byte 0.
    pub(super) fn open(
        path: PathBuf,
        id: (u64, u64),
        committed: &Positions,
        format: Format,
        max_line: usize,
    ) -> io::Result<Tailed> {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        let mut t = Tailed {
            id,
            path,
            reader: BufReader::with_capacity(64 * 1024, file),
            pos: 0,
            pending: Vec::new(),
            dropped: 0,
            fingerprint: None,
            partition: None,
            csv_header: CsvHeader::Unread,
            csv_row: CsvRow::default(),
            first_newline: None,
            warned_unterminated: None,
            at_eof: false,
            gone_since: None,
        };
        if let Some(resume) = committed.get(&partition_key(id)) {
            match t.check_resume(resume, len)? {
                Ok(pos) => {
                    if format == Format::Csv {
                        t.csv_header = read_csv_header(t.reader.get_ref(), max_line)?;
                    }
                    t.reader.seek(SeekFrom::Start(pos))?;
                    t.pos = pos;
                    tracing::info!(path = %t.path.display(), pos, "resuming file");
                }
                Err(why) => {
                    tracing::warn!(path = %t.path.display(), why, "committed position does not fit this file; reading it from the start");
                    t.fingerprint = None;
                }
            }
        } else {
            tracing::info!(path = %t.path.display(), "following new file");
        }
        t.refresh_partition();
        Ok(t)
    }

    /// Whether `resume` belongs to this file's content: Ok(offset) or Err(why not).
    pub(super) fn check_resume(
        &mut self,
        resume: &Position,
        len: u64,
    ) -> io::Result<Result<u64, &'static str>> {
        let info = &resume.partition.info;
        let (Some(pos), Some(fp), Some(fp_len)) = (
            resume.offset.as_u64(),
            info.get("fp").and_then(Value::as_str),
            info.get("fp_len").and_then(Value::as_u64),
        ) else {
            return Ok(Err("the stored position is not a file position"));
        };
        if pos > len {
            return Ok(Err(
                "the file is shorter than the committed offset (truncated)",
            ));
        }
        // A stored position is outside data too (an edited offsets file):
        // a fingerprint longer than ferry makes, or than the file, is not
        // this file's.
        if fp_len > FINGERPRINT_BYTES as u64 || fp_len > len {
            return Ok(Err("the stored fingerprint does not fit this file"));
        }
        let mut head = vec![0u8; fp_len as usize];
        if self.reader.get_ref().read_exact_at(&mut head, 0).is_err() {
            return Ok(Err("the file is shorter than its fingerprint"));
        }
        let hash = fnv1a(&head);
        if format!("{hash:016x}") != fp {
            return Ok(Err(
                "the file's first line changed (inode reused by a new file)",
            ));
        }
        self.fingerprint = Some((hash, head.len()));
        Ok(Ok(pos))
    }

    pub(super) fn refresh_partition(&mut self) {
        self.partition = self.fingerprint.map(|(hash, len)| {
            let path = self.path.to_string_lossy();
            Arc::new(
                Partition::new(partition_key(self.id))
                    .labelled(path.clone())
                    .with_info(json!({
                        "path": path,
                        "fp": format!("{hash:016x}"),
                        "fp_len": len,
                    })),
            )
        });
    }

    /// Reads complete lines into `out` until it holds `max` items or the
    /// file has nothing complete left.
    pub(super) fn read_into(
        &mut self,
        out: &mut Vec<SourceItem>,
        max: usize,
        format: Format,
        max_line: usize,
        once: bool,
    ) -> Result<(), ConnectorError> {
        // Of an over-long line only this much is kept, for the dead-letter entry.
        let keep = max_line.min(1024);
        while out.len() < max {
            // `take` bounds memory: a line longer than max_line is never held whole.
            let room = if self.dropped > 0 {
                64 * 1024
            } else {
                (max_line + 1).saturating_sub(self.pending.len()).max(1)
            };
            let before = self.pending.len();
            let n = (&mut self.reader)
                .take(room as u64)
                .read_until(b'\n', &mut self.pending)
                .map_err(|e| ConnectorError::io(format!("reading {}", self.path.display()), e))?;
            if n == 0 {
                self.at_eof = true;
                if once && self.end_of_input(out, format)? {
                    continue;
                }
                return self.check_truncated();
            }
            self.at_eof = false;
            let has_newline = self.pending.last() == Some(&b'\n');
            let content_len = self.pending.len() - usize::from(has_newline);
            if format == Format::Csv && self.dropped == 0 {
                self.csv_row.feed(&self.pending[before..]);
                if self.first_newline.is_some() && content_len > max_line {
                    let why = format!("does not close within max_line_bytes ({max_line})");
                    self.cut_open_row(out, format, &why)?;
                    continue;
                }
            }
            if self.dropped > 0 || content_len > max_line {
                if self.pending.len() > keep {
                    self.dropped += (self.pending.len() - keep) as u64;
                    self.pending.truncate(keep);
                }
                if has_newline {
                    self.emit_line(out, format, max_line);
                }
                continue;
            }
            if !has_newline {
                continue;
            }
            if format == Format::Csv && self.csv_row.open() {
                self.first_newline.get_or_insert(self.pending.len());
            } else {
                self.emit_line(out, format, max_line);
            }
        }
        Ok(())
    }

    /// `--once` at the end of the file: what is left unfinished will not be
    /// finished. A CSV row inside a quoted field that never closed costs
    /// only its first line (true: read on after it); a last line without its
    /// newline stays unread, and is named once.
    pub(super) fn end_of_input(
        &mut self,
        out: &mut Vec<SourceItem>,
        format: Format,
    ) -> Result<bool, ConnectorError> {
        if self.first_newline.is_some() {
            self.cut_open_row(out, format, "never closes before the end of the file")?;
            return Ok(true);
        }
        let left = self.pending.len() + self.dropped as usize;
        if left > 0 && self.warned_unterminated != Some(left) {
            self.warned_unterminated = Some(left);
            tracing::warn!(
                path = %self.path.display(),
                bytes = left,
                offset = self.pos,
                "the file ends with {left} bytes that have no line ending: they are not read \
                 (the committed position stays before them, so a later run reads them once \
                 the line is complete)"
            );
        }
        Ok(false)
    }

    /// Moves past `len` bytes of the file: the position of what they held.
    pub(super) fn advance(&mut self, len: u64) -> Position {
        if self.pos == 0 && self.fingerprint.is_none() {
            let head = &self.pending[..self.pending.len().min(FINGERPRINT_BYTES)];
            self.fingerprint = Some((fnv1a(head), head.len()));
            self.refresh_partition();
        }
        self.pos += len;
        Position {
            partition: self.partition.clone().expect("set with the fingerprint"),
            offset: Value::from(self.pos),
        }
    }

    /// A CSV row whose quoted field does not close: its first line becomes a
    /// bad record, and reading starts again right after that line, so the
    /// rows below are read as rows.
    pub(super) fn cut_open_row(
        &mut self,
        out: &mut Vec<SourceItem>,
        format: Format,
        why: &str,
    ) -> Result<(), ConnectorError> {
        let first = self
            .first_newline
            .take()
            .expect("a row past its first line");
        let line = line_content(&self.pending[..first - 1], self.pos == 0);
        let raw = Raw::of(line);
        let error =
            format!("a quoted CSV field opened on this line {why}; only this line is skipped");
        self.refuse_header(format, &error);
        let position = self.advance(first as u64);
        out.push(SourceItem::Invalid(Invalid {
            raw,
            error,
            position,
        }));
        self.clear_pending();
        self.reader
            .seek(SeekFrom::Start(self.pos))
            .map_err(|e| ConnectorError::io(format!("seeking {}", self.path.display()), e))?;
        Ok(())
    }

    pub(super) fn emit_line(&mut self, out: &mut Vec<SourceItem>, format: Format, max_line: usize) {
        let line_len = self.dropped + self.pending.len() as u64;
        let at_start = self.pos == 0;
        let position = self.advance(line_len);
        if self.dropped > 0 {
            let error = format!(
                "line of {line_len} bytes is longer than max_line_bytes ({max_line}); only its start is kept here"
            );
            self.refuse_header(format, &error);
            out.push(SourceItem::Invalid(Invalid {
                raw: Raw::of(&self.pending),
                error,
                position,
            }));
        } else {
            let line = line_content(&self.pending[..self.pending.len() - 1], at_start);
            match parse_line(format, line, &mut self.csv_header) {
                Parsed::Record(v) => out.push(SourceItem::Record(Record::new(v, position))),
                Parsed::Skip => {}
                Parsed::Invalid(error) => out.push(SourceItem::Invalid(Invalid {
                    raw: Raw::of(line),
                    error,
                    position,
                })),
            }
        }
        self.clear_pending();
    }

    /// Nothing of the next line or row read yet.
    pub(super) fn clear_pending(&mut self) {
        self.pending.clear();
        self.dropped = 0;
        self.csv_row = CsvRow::default();
        self.first_newline = None;
        self.warned_unterminated = None;
    }

    /// The line that was to be the CSV header is a bad record: without its
    /// header no row of the file can be read, and the next row must not
    /// take its place.
    pub(super) fn refuse_header(&mut self, format: Format, error: &str) {
        if format == Format::Csv && matches!(self.csv_header, CsvHeader::Unread) {
            self.csv_header = CsvHeader::Bad(format!("header row: {error}"));
        }
    }

    /// At end of file: if the file is now shorter than what was read, it was
    /// truncated in place (copytruncate rotation): start again from byte 0.
    pub(super) fn check_truncated(&mut self) -> Result<(), ConnectorError> {
        let len = self
            .reader
            .get_ref()
            .metadata()
            .map_err(|e| ConnectorError::io(format!("stat {}", self.path.display()), e))?
            .len();
        let read = self.pos + self.dropped + self.pending.len() as u64;
        if len < read {
            tracing::warn!(path = %self.path.display(), len, read, "file was truncated; reading it from the start");
            self.reader
                .seek(SeekFrom::Start(0))
                .map_err(|e| ConnectorError::io(format!("seeking {}", self.path.display()), e))?;
            self.pos = 0;
            self.clear_pending();
            self.fingerprint = None;
            self.csv_header = CsvHeader::Unread;
            self.refresh_partition();
        }
        Ok(())
    }
}

/// A line without its newline, carriage return and (at the start of the
/// file) byte-order mark.
pub(super) fn line_content(line: &[u8], at_start: bool) -> &[u8] {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if at_start {
        line.strip_prefix(BOM).unwrap_or(line)
    } else {
        line
    }
}

pub(crate) fn partition_key((dev, ino): (u64, u64)) -> String {
    format!("file:{dev}:{ino}")
}

/// Whether the file of partition `key`, at `path`, could be resumed at byte
/// `at`: still that file, long enough, and `at` the start of a line (past
/// the header row of a CSV file). Blocking.
pub(crate) fn check_line_start(
    path: &std::path::Path,
    key: &str,
    at: u64,
    csv: bool,
) -> Result<(), ConnectorError> {
    let refuse = |why: String| Err(ConnectorError::Fatal(why));
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return refuse(format!("{}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| ConnectorError::Fatal(format!("{}: {e}", path.display())))?;
    if partition_key((meta.dev(), meta.ino())) != key {
        return refuse(format!(
            "{} is no longer the file of this partition (rotated or replaced)",
            path.display()
        ));
    }
    if at > meta.len() {
        return refuse(format!(
            "{} has {} bytes: {at} is past its end",
            path.display(),
            meta.len()
        ));
    }
    if at == 0 {
        return if csv {
            refuse(
                "a CSV file is resumed past its header row (null: read it from its start)".into(),
            )
        } else {
            Ok(())
        };
    }
    let mut before = [0u8; 1];
    file.read_exact_at(&mut before, at - 1)
        .map_err(|e| ConnectorError::Fatal(format!("{}: {e}", path.display())))?;
    if before[0] != b'\n' {
        return refuse(format!(
            "byte {at} of {} is not the start of a line",
            path.display()
        ));
    }
    // A newline inside a quoted CSV field is not a row's end: quotes
    // before it come in pairs ("" inside a field is a pair too).
    if csv
        && quotes_before(&file, at)
            .map_err(|e| ConnectorError::Fatal(format!("{}: {e}", path.display())))?
            % 2
            == 1
    {
        return refuse(format!(
            "byte {at} of {} is inside a quoted field, not at the start of a row",
            path.display()
        ));
    }
    Ok(())
}

/// How many `"` the first `end` bytes of `file` hold.
fn quotes_before(file: &File, end: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut at, mut quotes) = (0u64, 0u64);
    while at < end {
        let want = buf.len().min((end - at) as usize);
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        quotes += buf[..n].iter().filter(|b| **b == b'"').count() as u64;
        at += n as u64;
    }
    Ok(quotes)
}

/// Reads the header row of a CSV file from its start (for a resumed file).
pub(super) fn read_csv_header(file: &File, max_line: usize) -> io::Result<CsvHeader> {
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(SeekFrom::Start(0))?;
    let mut row = Vec::new();
    let mut state = CsvRow::default();
    loop {
        let before = row.len();
        let n = (&mut reader)
            .take((max_line + 1) as u64)
            .read_until(b'\n', &mut row)?;
        state.feed(&row[before..]);
        if row.len() > max_line + 1 || (row.len() > max_line && row.last() != Some(&b'\n')) {
            // The first run refused this header as longer than max_line_bytes.
            return Ok(CsvHeader::Bad(
                "header row longer than max_line_bytes".into(),
            ));
        }
        if !state.open() {
            break;
        }
        if n == 0 {
            // The first run cut this header row as a field that never closed.
            return Ok(CsvHeader::Bad(
                "header row: a quoted CSV field opened on it does not close".into(),
            ));
        }
    }
    while matches!(row.last(), Some(b'\n' | b'\r')) {
        row.pop();
    }
    let row = row.strip_prefix(BOM).unwrap_or(&row);
    // Parsed as the first run did: the same verdict on the same header.
    let mut header = CsvHeader::Unread;
    parse_line(Format::Csv, row, &mut header);
    Ok(header)
}

/// 64-bit FNV-1a: a stable hash (std's hasher may change between releases,
/// and fingerprints are stored on disk).
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
