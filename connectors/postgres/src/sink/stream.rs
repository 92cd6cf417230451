//! The fast path: one COPY per transaction, kept open across writes on a
//! task that holds the connection; for upserts, straight into the target
//! while no key exists yet, else through the staging table.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use ferry_api::{ConnectorError, Record, Value};
use sqlx::{AssertSqlSafe, PgConnection};

use super::{ColumnRun, PostgresSink};
use crate::config::Mode;
use crate::copy_text::encode;
use crate::sql::{db_error, is_data_error, is_unique_violation, quote, refusal};

/// A COPY in progress on a task that holds the connection for the stream's
/// lifetime (sqlx's `PgCopyIn` borrows the connection, so it cannot sit in
/// the sink beside it). Encoded rows go to it through a small bounded
/// channel; closing the channel finishes the COPY and hands the connection
/// back.
pub(super) struct CopyStream {
    /// The columns the COPY was started with.
    cols: Vec<(String, String, bool)>,
    /// Where the rows go: an upsert streams into the staging table, or
    /// (optimistically) straight into the target under a savepoint.
    dest: Dest,
    /// A direct upsert keeps what it sent, to move it through the staging
    /// table if the target already holds one of its keys.
    sent: Vec<Bytes>,
    rows: tokio::sync::mpsc::Sender<Bytes>,
    pub(super) task: tokio::task::JoinHandle<(PgConnection, Result<(), sqlx::Error>)>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Dest {
    /// `mode: insert`.
    Target,
    /// `mode: upsert`, betting that no key exists yet: as fast as an insert.
    TargetUnlessConflict,
    /// `mode: upsert` through the staging table and `INSERT … ON CONFLICT`.
    Stage,
}

/// Upserts: after a direct stream met existing keys, the next `streams`
/// streams go through the staging table; `run` doubles with each direct
/// attempt that fails, so a stream of updates soon stops trying, and a run
/// of new keys soon goes direct again.
#[derive(Default)]
pub(super) struct UpsertRoute {
    streams: AtomicU32,
    run: AtomicU32,
}

impl UpsertRoute {
    /// Whether the next stream should go through the staging table.
    fn staged(&self) -> bool {
        self.streams
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
    fn direct_worked(&self) {
        self.run.store(0, Relaxed);
    }
    fn conflicted(&self) {
        let run = (self.run.load(Relaxed) * 2).clamp(1, 1024);
        self.run.store(run, Relaxed);
        self.streams.store(run, Relaxed);
    }
}

/// Everything finishing a COPY stream needs, owned, so a commit can run it
/// on its own task.
pub(super) struct Finish {
    stream: CopyStream,
    /// `COPY ferry_stage (…)`, for a direct upsert that met existing keys.
    stage_copy: String,
    /// Moves staged rows into the target (upserts).
    move_staged: String,
    route: Arc<UpsertRoute>,
}

pub(super) async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await?;
    Ok(())
}

/// One COPY of already encoded rows, waiting for the server.
pub(super) async fn copy_in(
    conn: &mut PgConnection,
    copy: &str,
    chunks: &[Bytes],
) -> Result<(), sqlx::Error> {
    let mut copy_in = conn.copy_in_raw(copy).await?;
    for chunk in chunks {
        copy_in.send(chunk.as_ref()).await?;
    }
    copy_in.finish().await?;
    Ok(())
}

/// Ends a COPY stream and takes its connection back; for upserts, moves
/// the staged rows into the target. A direct upsert that met an existing
/// key is rolled back to its savepoint and goes through the staging table.
pub(super) async fn finish(
    f: Finish,
) -> Result<(PgConnection, Result<(), sqlx::Error>), ConnectorError> {
    let CopyStream {
        dest,
        sent,
        rows,
        task,
        ..
    } = f.stream;
    drop(rows);
    let (mut conn, mut result) = task
        .await
        .map_err(|e| ConnectorError::Fatal(format!("the COPY task failed: {e}")))?;
    match (dest, &result) {
        (Dest::Stage, Ok(())) => result = exec(&mut conn, &f.move_staged).await,
        (Dest::TargetUnlessConflict, Ok(())) => f.route.direct_worked(),
        (Dest::TargetUnlessConflict, Err(e)) if is_unique_violation(e) => {
            f.route.conflicted();
            result = async {
                exec(&mut conn, "ROLLBACK TO SAVEPOINT ferry_copy").await?;
                copy_in(&mut conn, &f.stage_copy, &sent).await?;
                exec(&mut conn, &f.move_staged).await
            }
            .await;
        }
        _ => {}
    }
    Ok((conn, result))
}

/// What a failed COPY means. A refused row aborted the transaction: the
/// batch is replayed once with every chunk under a savepoint, which
/// isolates the row (see `write`).
pub(super) fn copy_failed(
    isolate_next: &AtomicUsize,
    uncommitted: usize,
    table: &str,
    e: sqlx::Error,
) -> ConnectorError {
    if is_data_error(&e) {
        isolate_next.store(uncommitted, Relaxed);
        ConnectorError::Retriable(format!(
            "the database refused a row of this batch ({}); replaying the batch chunk by chunk to isolate it",
            refusal(&e)
        ))
    } else {
        db_error(&format!("writing rows into {table}"), e)
    }
}

/// A direct upsert stream that has kept this much is finished early (its
/// rows are in; the next write starts a new stream), so what it keeps for a
/// conflict stays bounded whatever `delivery.batch_size` is.
const SENT_MAX: usize = 16 << 20;

/// `"a", "b"`: a COPY's or an INSERT's column list.
pub(super) fn column_list(cols: &[(String, String, bool)]) -> String {
    cols.iter()
        .map(|(_, c, _)| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PostgresSink {
    /// Consecutive rows that give values for the same columns, each run with
    /// those columns (key columns always). A field a record leaves out is
    /// not written, so its column takes its DEFAULT (NULL when it has none;
    /// on an upsert's update it keeps its value) whatever the rows around
    /// it hold; a field that is `null` is NULL. So how a batch is split
    /// (a refused row splits it) never changes what a row becomes.
    pub(super) fn column_runs<'r>(&self, rows: &'r [&'r Record]) -> Vec<ColumnRun<'r>> {
        // Compared row to row without building anything: this runs for
        // every record.
        let has = |r: &Record, f: &str| r.value.get(f).is_some();
        let same_fields =
            |a: &Record, b: &Record| self.mapping.iter().all(|(f, _, _)| has(a, f) == has(b, f));
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=rows.len() {
            if i == rows.len() || !same_fields(rows[start], rows[i]) {
                let cols: Vec<(String, String, bool)> = self
                    .mapping
                    .iter()
                    .filter(|(f, c, _)| self.config.key.contains(c) || has(rows[start], f))
                    .cloned()
                    .collect();
                if !cols.is_empty() {
                    runs.push((&rows[start..i], cols));
                }
                start = i;
            }
        }
        runs
    }

    /// Rows in COPY's text format.
    pub(super) fn encode_rows(
        rows: &[&Record],
        cols: &[(String, String, bool)],
        buf: &mut Vec<u8>,
    ) {
        for r in rows {
            for (n, (field, _, json)) in cols.iter().enumerate() {
                if n > 0 {
                    buf.push(b'\t');
                }
                encode(
                    r.value.get(field.as_str()).unwrap_or(&Value::Null),
                    *json,
                    buf,
                );
            }
            buf.push(b'\n');
        }
    }

    /// `COPY … FROM STDIN` into the target or the staging table (whose
    /// `ferry_ord` numbers the rows in the order they came).
    pub(super) fn copy_statement(&self, col_list: &str, stage: bool) -> String {
        if stage {
            format!("COPY {} ({col_list}) FROM STDIN (FORMAT text)", self.stage)
        } else {
            format!("COPY {} ({col_list}) FROM STDIN (FORMAT text)", self.target)
        }
    }

    /// The fast path: sends the rows into the transaction's open COPY
    /// without waiting for the server. A row the server refuses aborts the
    /// COPY, and with it the transaction; that shows at
    /// [`Self::finish_stream`].
    pub(super) async fn stream_rows(&mut self, rows: &[&Record]) -> Result<(), ConnectorError> {
        for (run, cols) in self.column_runs(rows) {
            self.stream_run(run, cols).await?;
        }
        Ok(())
    }

    async fn stream_run(
        &mut self,
        rows: &[&Record],
        cols: Vec<(String, String, bool)>,
    ) -> Result<(), ConnectorError> {
        if self.stream.as_ref().is_some_and(|s| s.cols != cols) {
            self.finish_stream().await?;
        }
        if self.stream.is_none() {
            self.open_stream(cols).await?;
        }
        let mut buf = Vec::with_capacity(rows.len() * 128);
        Self::encode_rows(rows, &self.stream.as_ref().expect("open").cols, &mut buf);
        let buf = Bytes::from(buf);
        let stream = self.stream.as_mut().expect("just opened");
        if stream.dest == Dest::TargetUnlessConflict {
            stream.sent.push(buf.clone());
        }
        // A closed channel means the COPY already ended with an error:
        // finish_stream reports it. These rows were not sent, so never Ok.
        if stream.rows.send(buf).await.is_err() {
            self.finish_stream().await?;
            return Err(ConnectorError::Retriable(
                "the COPY stream ended before its rows were sent".into(),
            ));
        }
        if stream.sent.iter().map(Bytes::len).sum::<usize>() >= SENT_MAX {
            self.finish_stream().await?;
        }
        Ok(())
    }

    /// Starts a COPY on a task that holds the connection until it ends.
    async fn open_stream(
        &mut self,
        cols: Vec<(String, String, bool)>,
    ) -> Result<(), ConnectorError> {
        let dest = match self.config.mode {
            Mode::Insert => Dest::Target,
            Mode::Upsert if self.upsert_route.staged() => Dest::Stage,
            Mode::Upsert => Dest::TargetUnlessConflict,
        };
        if dest == Dest::TargetUnlessConflict {
            // The savepoint a conflict rolls back to.
            self.next_savepoint("ferry_copy", self.copy_savepoint)
                .await?;
            self.copy_savepoint = true;
        }
        let mut conn = self.conn.take().expect("used after open");
        let copy = self.copy_statement(&column_list(&cols), dest == Dest::Stage);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let task = tokio::spawn(async move {
            let result = async {
                let mut copy_in = conn.copy_in_raw(&copy).await?;
                while let Some(bytes) = rx.recv().await {
                    copy_in.send(bytes).await?;
                }
                copy_in.finish().await?;
                Ok(())
            }
            .await;
            (conn, result)
        });
        self.stream = Some(CopyStream {
            cols,
            dest,
            sent: Vec::new(),
            rows: tx,
            task,
        });
        Ok(())
    }

    /// What finishing `stream` needs, owned.
    pub(super) fn finish_plan(&self, stream: CopyStream) -> Finish {
        Finish {
            stage_copy: self.copy_statement(&column_list(&stream.cols), true),
            move_staged: self.move_statement(&stream.cols),
            stream,
            route: self.upsert_route.clone(),
        }
    }

    /// Ends the open COPY mid-transaction and takes the connection back.
    pub(super) async fn finish_stream(&mut self) -> Result<(), ConnectorError> {
        let Some(stream) = self.stream.take() else {
            return Ok(());
        };
        let (conn, result) = finish(self.finish_plan(stream)).await?;
        self.conn = Some(conn);
        result.map_err(|e| copy_failed(&self.isolate_next, self.uncommitted, &self.table, e))
    }

    /// Upserts: moves the staged rows into the target with one `INSERT …
    /// ON CONFLICT` and empties the staging table.
    pub(super) async fn move_staged(
        &mut self,
        cols: &[(String, String, bool)],
    ) -> Result<(), sqlx::Error> {
        let sql = self.move_statement(cols);
        exec(self.conn(), &sql).await
    }

    /// The statement [`Self::move_staged`] runs.
    fn move_statement(&self, cols: &[(String, String, bool)]) -> String {
        let col_list = column_list(cols);
        let keys = self
            .config
            .key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ");
        let updates: Vec<String> = cols
            .iter()
            .filter(|(_, c, _)| !self.config.key.contains(c))
            .map(|(_, c, _)| format!("{} = EXCLUDED.{}", quote(c), quote(c)))
            .collect();
        let action = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        // DISTINCT ON keeps the last record of each key: one statement may
        // not update a row twice.
        let insert = format!(
            "INSERT INTO {} ({col_list}) SELECT DISTINCT ON ({keys}) {col_list} FROM {} \
             ORDER BY {keys}, ferry_ord DESC ON CONFLICT ({keys}) {action}",
            self.target, self.stage
        );
        format!("{insert}; TRUNCATE {}", self.stage)
    }
}
