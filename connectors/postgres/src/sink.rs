//! The PostgreSQL sink: rows go in with COPY, and the source positions are
//! stored in the same transaction, so a replay after any crash starts exactly
//! where the committed rows end.
//!
//! How it keeps up with `psql \copy`:
//! * one COPY per transaction, kept open across the engine's writes on a task
//!   that holds the connection, so the server loads while ferry encodes;
//! * `insert` COPYs straight into the table; `upsert` does too while no key
//!   of the stream exists yet (under a savepoint), and on a unique violation
//!   rolls back to the savepoint and moves the same rows through a staging
//!   table with one `INSERT … SELECT DISTINCT ON … ON CONFLICT` (the last
//!   record of a key wins). After a conflict the next streams go staged
//!   directly, for a run that doubles with each failed direct attempt;
//! * transactions alternate between two connections: a commit (finish the
//!   COPY, store the positions, COMMIT) runs on its own task while the next
//!   batch is written on the other connection ([`Sink::start_commit`]).
//!
//! A row the server refuses aborts the COPY and the transaction; the batch is
//! then replayed once with a savepoint per chunk, splitting chunks until
//! the refused rows stand alone, and those are reported as rejected.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_api::{
    ConnectorError, PendingCommit, Position, Positions, Record, Rejected, Sink, Value,
};
// Every dynamic SQL string here interpolates only identifiers that were
// validated as plain names and are quoted; values are bound.
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use crate::column_types::{column_type, identifier_prefix};
use crate::config::{Columns, Mode, PostgresSinkConfig, split_table};
use crate::copy_text::encode;
use crate::sql::{db_error, is_data_error, is_unique_violation, quote, refusal};

/// Consecutive rows and the columns they give values for: (field, column,
/// whether the column takes JSON).
type ColumnRun<'r> = (&'r [Record], Vec<(String, String, bool)>);

/// Per-connection temporary table the rows are COPYed into.
const STAGE: &str = "ferry_stage";

pub(crate) struct PostgresSink {
    config: PostgresSinkConfig,
    pipeline: String,
    /// The connection of the transaction being written. `None` while a
    /// COPY stream holds it, or between a started commit and the next write.
    conn: Option<PgConnection>,
    /// The connection of the last commit, handed back by its task once
    /// durable: transactions alternate between two connections, so one
    /// commits while the next batch is written on the other.
    spare: Arc<Mutex<Option<PgConnection>>>,
    /// Records of this life to write the careful way (a savepoint per
    /// chunk): taken at `open` from what a refused row left in the config.
    careful: usize,
    /// This transaction created the table: its commit must be durable
    /// before the other connection can see the table.
    created_table: bool,
    /// `"schema"."table"`, quoted.
    target: String,
    offsets: String,
    /// `(field, column, column holds json)`, resolved against the table.
    mapping: Vec<(String, String, bool)>,
    /// The table is missing and `create_table` is on: the first write
    /// creates it from its records, in the batch's own transaction.
    pending_create: bool,
    in_transaction: bool,
    /// `ferry_rows` is set; the next chunk releases it and sets a new one in
    /// the same round trip.
    savepoint: bool,
    /// The COPY kept open across the writes of a transaction (into the
    /// target for inserts, into the staging table for upserts), so the
    /// server loads one chunk while ferry encodes the next instead of the
    /// two taking turns.
    stream: Option<CopyStream>,
    /// `ferry_copy` is set (an upsert stream straight into the target).
    copy_savepoint: bool,
    adapt: Arc<Adapt>,
    /// Records written since the last commit.
    uncommitted: usize,
    /// Each partition's position as this sink last read or stored it. Only
    /// positions that moved are stored: several ferry processes sharing a
    /// Kafka group write their partitions' rows side by side, and one must
    /// not put back the stale position of a partition it no longer owns.
    stored: HashMap<String, String>,
    /// Positions as the table held them when partitions last moved here
    /// ([`Sink::shared_positions`]): the other value a commit may store over.
    handed_over: HashMap<String, String>,
}

/// A COPY in progress on a task that holds the connection for the stream's
/// lifetime (sqlx's `PgCopyIn` borrows the connection, so it cannot sit in
/// the sink beside it). Encoded rows go to it through a small bounded
/// channel; closing the channel finishes the COPY and hands the connection
/// back.
struct CopyStream {
    /// The columns the COPY was started with.
    cols: Vec<(String, String, bool)>,
    /// Where the rows go: an upsert streams into the staging table, or
    /// (optimistically) straight into the target under a savepoint.
    dest: Dest,
    /// A direct upsert keeps what it sent, to move it through the staging
    /// table if the target already holds one of its keys.
    sent: Vec<Bytes>,
    rows: tokio::sync::mpsc::Sender<Bytes>,
    task: tokio::task::JoinHandle<(PgConnection, Result<(), sqlx::Error>)>,
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
struct Adapt {
    streams: AtomicU32,
    run: AtomicU32,
}

impl Adapt {
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
struct Finish {
    stream: CopyStream,
    /// `COPY ferry_stage (…)`, for a direct upsert that met existing keys.
    stage_copy: String,
    /// Moves staged rows into the target (upserts).
    move_staged: String,
    adapt: Arc<Adapt>,
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await?;
    Ok(())
}

/// One COPY of already encoded rows, waiting for the server.
async fn copy_in(conn: &mut PgConnection, copy: &str, chunks: &[Bytes]) -> Result<(), sqlx::Error> {
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
async fn finish(f: Finish) -> Result<(PgConnection, Result<(), sqlx::Error>), ConnectorError> {
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
        (Dest::TargetUnlessConflict, Ok(())) => f.adapt.direct_worked(),
        (Dest::TargetUnlessConflict, Err(e)) if is_unique_violation(e) => {
            f.adapt.conflicted();
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
fn copy_failed(
    careful: &AtomicUsize,
    uncommitted: usize,
    table: &str,
    e: sqlx::Error,
) -> ConnectorError {
    if is_data_error(&e) {
        careful.store(uncommitted, Relaxed);
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
fn column_list(cols: &[(String, String, bool)]) -> String {
    cols.iter()
        .map(|(_, c, _)| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PostgresSink {
    pub(crate) fn new(config: PostgresSinkConfig, pipeline: String) -> Self {
        let (schema, table) = split_table(&config.table).expect("validated");
        let (oschema, otable) = split_table(&config.offsets_table).expect("validated");
        PostgresSink {
            target: format!("{}.{}", quote(&schema), quote(&table)),
            offsets: format!("{}.{}", quote(&oschema), quote(&otable)),
            config,
            pipeline,
            conn: None,
            mapping: Vec::new(),
            pending_create: false,
            savepoint: false,
            stream: None,
            copy_savepoint: false,
            adapt: Arc::default(),
            spare: Arc::default(),
            careful: 0,
            created_table: false,
            uncommitted: 0,
            stored: HashMap::new(),
            handed_over: HashMap::new(),
            in_transaction: false,
        }
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("used after open")
    }

    pub(crate) async fn connect(&mut self) -> Result<(), ConnectorError> {
        self.conn = Some(crate::net::connect(&self.config.url, &self.pipeline).await?);
        Ok(())
    }

    /// Reads the table's columns and maps fields onto them. Returns false
    /// when the table does not exist.
    pub(crate) async fn resolve_columns(&mut self) -> Result<bool, ConnectorError> {
        let (schema, table) = split_table(&self.config.table).expect("validated");
        let rows = sqlx::query(
            "SELECT column_name::text, data_type IN ('json', 'jsonb') FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(self.conn())
        .await
        .map_err(|e| db_error("reading the table's columns", e))?;
        let columns: Vec<(String, bool)> = rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<bool, _>(1)))
            .collect();
        if columns.is_empty() {
            return Ok(false);
        }
        let json = |c: &str| columns.iter().find(|(n, _)| n == c).map(|(_, j)| *j);
        self.mapping = match &self.config.columns {
            Columns::Auto => columns
                .iter()
                .map(|(c, j)| (c.clone(), c.clone(), *j))
                .collect(),
            Columns::Map(map) => {
                let missing: Vec<&str> = map
                    .iter()
                    .filter(|(_, c)| json(c).is_none())
                    .map(|(_, c)| c.as_str())
                    .collect();
                if !missing.is_empty() {
                    return Err(ConnectorError::Fatal(format!(
                        "columns: {} not in table {}",
                        missing.join(", "),
                        self.config.table
                    )));
                }
                map.iter()
                    .map(|(f, c)| (f.clone(), c.clone(), json(c).unwrap_or(false)))
                    .collect()
            }
        };
        for k in &self.config.key {
            if json(k).is_none() {
                return Err(ConnectorError::Fatal(format!(
                    "key column `{k}` is not a column of {}",
                    self.config.table
                )));
            }
        }
        Ok(true)
    }

    /// Everything `open` checks, without changing anything: for `ferry
    /// validate --check-connections`.
    pub(crate) async fn check(&mut self) -> Result<(), ConnectorError> {
        self.connect().await?;
        let found = self.resolve_columns().await;
        self.close_conn().await;
        match found? {
            true => Ok(()),
            false if self.config.create_table => Ok(()),
            false => Err(self.missing_table()),
        }
    }

    /// The positions the offsets table holds for this pipeline.
    async fn read_positions(&mut self) -> Result<Positions, ConnectorError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT position::text FROM {} WHERE pipeline = $1",
            self.offsets
        )))
        .bind(&self.pipeline)
        .fetch_all(self.conn())
        .await
        .map_err(|e| db_error("reading committed positions", e))?;
        let mut positions = Positions::new();
        for row in rows {
            let text: String = row.get(0);
            let p: Position = serde_json::from_str(&text).map_err(|e| {
                ConnectorError::Fatal(format!(
                    "a row of {} is not a ferry position: {e}",
                    self.config.offsets_table
                ))
            })?;
            positions.advance(&p);
        }
        Ok(positions)
    }

    fn missing_table(&self) -> ConnectorError {
        ConnectorError::Fatal(format!(
            "table {} does not exist (or has no columns visible to this user); \
             create it, or set create_table: true",
            self.config.table
        ))
    }

    async fn close_conn(&mut self) {
        if let Some(stream) = self.stream.take() {
            // Dropping the connection mid-COPY rolls the transaction back.
            stream.task.abort();
        }
        let spare = self.spare.lock().expect("not poisoned").take();
        for conn in self.conn.take().into_iter().chain(spare) {
            // An open transaction rolls back with the connection.
            let _ = conn.close().await;
        }
    }

    /// For `mode: upsert`: the per-connection staging table rows are COPYed
    /// into before the `INSERT … ON CONFLICT`.
    async fn create_stage(&mut self) -> Result<(), ConnectorError> {
        if self.config.mode != Mode::Upsert {
            return Ok(());
        }
        let stage = format!(
            "DROP TABLE IF EXISTS {STAGE}; CREATE TEMP TABLE {STAGE} AS SELECT * FROM {} WITH NO DATA; \
             ALTER TABLE {STAGE} ADD COLUMN ferry_ord bigint GENERATED ALWAYS AS IDENTITY",
            self.target
        );
        self.execute("creating the staging table", &stage).await
    }

    /// `create_table: true`: creates the table from the fields of the first
    /// batch, inside the batch's transaction (a crash undoes both).
    async fn create_table(&mut self, batch: &[Record]) -> Result<(), ConnectorError> {
        let fields: Vec<(String, String)> = match &self.config.columns {
            Columns::Map(map) => map.clone(),
            Columns::Auto => {
                let mut names = std::collections::BTreeSet::new();
                for r in batch {
                    if let Value::Object(o) = &*r.value {
                        names.extend(o.keys().cloned());
                    }
                }
                // A field that cannot be a column name (empty, or the same
                // as another within PostgreSQL's 63 bytes) gets no column:
                // one odd record must not stop the whole pipeline. Its value
                // is not stored, as for any field without a column.
                let mut seen = std::collections::HashSet::new();
                names
                    .into_iter()
                    .filter(|n| {
                        let ok = !n.is_empty() && seen.insert(identifier_prefix(n).to_string());
                        if !ok {
                            tracing::warn!(table = %self.config.table, field = %n, "create_table: this field cannot be a column of its own (empty, or the same as another within PostgreSQL's 63-byte names); it is not stored");
                        }
                        ok
                    })
                    .map(|n| (n.clone(), n))
                    .collect()
            }
        };
        for k in &self.config.key {
            if !fields.iter().any(|(_, c)| c == k) {
                return Err(ConnectorError::Fatal(format!(
                    "create_table: key column `{k}` is not among the fields of the first records"
                )));
            }
        }
        let mut defs: Vec<String> = fields
            .iter()
            .map(|(f, c)| format!("{} {}", quote(c), column_type(batch, f)))
            .collect();
        if !self.config.key.is_empty() {
            let keys: Vec<String> = self.config.key.iter().map(|k| quote(k)).collect();
            defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.target,
            defs.join(", ")
        );
        self.execute(&format!("creating table {}", self.config.table), &sql)
            .await?;
        if !self.resolve_columns().await? {
            return Err(self.missing_table());
        }
        self.create_stage().await?;
        self.pending_create = false;
        self.created_table = true;
        tracing::info!(table = %self.config.table, "created the table from the first records");
        Ok(())
    }

    async fn execute(&mut self, context: &str, sql: &str) -> Result<(), ConnectorError> {
        exec(self.conn(), sql)
            .await
            .map_err(|e| db_error(context, e))
    }

    /// Sets savepoint `name`. Round trips cost more than the statements
    /// here: the release of the previous one of that name rides along.
    async fn next_savepoint(&mut self, name: &str, previous: bool) -> Result<(), ConnectorError> {
        let sql = if previous {
            format!("RELEASE SAVEPOINT {name}; SAVEPOINT {name}")
        } else {
            format!("SAVEPOINT {name}")
        };
        self.execute("setting a savepoint", &sql).await
    }

    /// A connection for the next transaction: the spare one if its commit
    /// handed it back, else a new one (with its own staging table).
    async fn ensure_conn(&mut self) -> Result<(), ConnectorError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let spare = self.spare.lock().expect("not poisoned").take();
        if let Some(conn) = spare {
            self.conn = Some(conn);
            return Ok(());
        }
        self.connect().await?;
        if !self.pending_create {
            self.create_stage().await?;
        }
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), ConnectorError> {
        if !self.in_transaction {
            self.ensure_conn().await?;
            self.execute("starting a transaction", "BEGIN").await?;
            self.in_transaction = true;
            self.savepoint = false;
            self.copy_savepoint = false;
        }
        Ok(())
    }

    /// Consecutive rows that give values for the same columns, each run with
    /// those columns (key columns always). A field a record leaves out is
    /// not written, so its column takes its DEFAULT (NULL when it has none;
    /// on an upsert's update it keeps its value) whatever the rows around
    /// it hold; a field that is `null` is NULL. So how a batch is split
    /// (a refused row splits it) never changes what a row becomes.
    fn column_runs<'r>(&self, rows: &'r [Record]) -> Vec<ColumnRun<'r>> {
        // Compared row to row without building anything: this runs for
        // every record.
        let has = |r: &Record, f: &str| r.value.get(f).is_some();
        let same_fields =
            |a: &Record, b: &Record| self.mapping.iter().all(|(f, _, _)| has(a, f) == has(b, f));
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=rows.len() {
            if i == rows.len() || !same_fields(&rows[start], &rows[i]) {
                let cols: Vec<(String, String, bool)> = self
                    .mapping
                    .iter()
                    .filter(|(f, c, _)| self.config.key.contains(c) || has(&rows[start], f))
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
    fn encode_rows(rows: &[Record], cols: &[(String, String, bool)], buf: &mut Vec<u8>) {
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
    fn copy_statement(&self, col_list: &str, stage: bool) -> String {
        if stage {
            format!("COPY {STAGE} ({col_list}) FROM STDIN (FORMAT text)")
        } else {
            format!("COPY {} ({col_list}) FROM STDIN (FORMAT text)", self.target)
        }
    }

    /// The fast path: sends the rows into the transaction's open COPY
    /// without waiting for the server. A row the server refuses aborts the
    /// COPY, and with it the transaction; that shows at
    /// [`Self::finish_stream`].
    async fn stream_rows(&mut self, rows: &[Record]) -> Result<(), ConnectorError> {
        for (run, cols) in self.column_runs(rows) {
            self.stream_run(run, cols).await?;
        }
        Ok(())
    }

    async fn stream_run(
        &mut self,
        rows: &[Record],
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
            Mode::Upsert if self.adapt.staged() => Dest::Stage,
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
    fn finish_plan(&self, stream: CopyStream) -> Finish {
        Finish {
            stage_copy: self.copy_statement(&column_list(&stream.cols), true),
            move_staged: self.move_statement(&stream.cols),
            stream,
            adapt: self.adapt.clone(),
        }
    }

    /// Ends the open COPY mid-transaction and takes the connection back.
    async fn finish_stream(&mut self) -> Result<(), ConnectorError> {
        let Some(stream) = self.stream.take() else {
            return Ok(());
        };
        let (conn, result) = finish(self.finish_plan(stream)).await?;
        self.conn = Some(conn);
        result.map_err(|e| {
            copy_failed(
                &self.config.careful,
                self.uncommitted,
                &self.config.table,
                e,
            )
        })
    }

    /// The careful way, one chunk under a savepoint: COPYs `rows` into the
    /// target (insert) or through the staging table (upsert).
    async fn copy_rows(&mut self, rows: &[Record]) -> Result<(), sqlx::Error> {
        for (run, cols) in self.column_runs(rows) {
            self.copy_run(run, &cols).await?;
        }
        Ok(())
    }

    async fn copy_run(
        &mut self,
        rows: &[Record],
        cols: &[(String, String, bool)],
    ) -> Result<(), sqlx::Error> {
        let mut buf = Vec::with_capacity(rows.len() * 128);
        Self::encode_rows(rows, cols, &mut buf);
        let upsert = self.config.mode == Mode::Upsert;
        let copy = self.copy_statement(&column_list(cols), upsert);
        copy_in(self.conn(), &copy, &[Bytes::from(buf)]).await?;
        if upsert {
            self.move_staged(cols).await?;
        }
        Ok(())
    }

    /// Upserts: moves the staged rows into the target with one `INSERT …
    /// ON CONFLICT` and empties the staging table.
    async fn move_staged(&mut self, cols: &[(String, String, bool)]) -> Result<(), sqlx::Error> {
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
            "INSERT INTO {} ({col_list}) SELECT DISTINCT ON ({keys}) {col_list} FROM {STAGE} \
             ORDER BY {keys}, ferry_ord DESC ON CONFLICT ({keys}) {action}",
            self.target
        );
        format!("{insert}; TRUNCATE {STAGE}")
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        // Read once per life: a commit failing on its own task sets it for
        // the next life, and must not be consumed by this one's writes.
        self.careful = self.config.careful.swap(0, Relaxed);
        self.connect().await?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} (pipeline text NOT NULL, partition text NOT NULL, position jsonb NOT NULL, \
             updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, partition))",
            self.offsets
        );
        // Two pipelines creating the table at once: one wins, the other sees
        // a duplicate — either way the table exists.
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(create))
            .execute(self.conn())
            .await
        {
            let duplicate = matches!(&e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("23505" | "42P07")));
            if !duplicate {
                return Err(db_error(
                    &format!("creating {}", self.config.offsets_table),
                    e,
                ));
            }
        }
        if self.resolve_columns().await? {
            self.create_stage().await?;
        } else if self.config.create_table {
            self.pending_create = true;
        } else {
            return Err(self.missing_table());
        }

        let positions = self.read_positions().await?;
        // What the rows hold now, as JSON text for comparison with what is
        // stored next.
        self.stored = positions
            .iter()
            .map(|p| {
                let text = serde_json::to_string(p).expect("positions serialize");
                (p.partition.key.clone(), text)
            })
            .collect();
        Ok(Some(positions))
    }

    /// The positions every process running this pipeline stored (they
    /// share the offsets table; each writes only its own partitions).
    async fn shared_positions(&mut self) -> Result<Vec<Positions>, ConnectorError> {
        self.ensure_conn().await?;
        let positions = self.read_positions().await?;
        // A partition that moves here was last stored by its previous
        // owner: this sink's first commit of it stores over that value
        // (`stored` keeps what this sink read itself, so that positions of
        // partitions it does not own are never put back).
        for p in positions.iter() {
            let text = serde_json::to_string(p).expect("positions serialize");
            self.handed_over.insert(p.partition.key.clone(), text);
        }
        Ok(vec![positions])
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.begin().await?;
        if self.pending_create {
            self.create_table(batch).await?;
        }
        self.uncommitted += batch.len();
        // After a refused row, the replayed records go the careful way.
        if self.careful > 0 {
            self.careful = self.careful.saturating_sub(batch.len());
        } else {
            self.stream_rows(batch).await?;
            return Ok(Vec::new());
        }
        // Nothing may run on the connection while a COPY is open.
        self.finish_stream().await?;
        // The whole chunk first; if the database refuses a row, split the
        // chunk under savepoints until every refused row stands alone, so the
        // good rows of the chunk still arrive.
        let mut rejected = Vec::new();
        // A stack of row ranges still to write; it starts as the whole chunk.
        #[allow(clippy::single_range_in_vec_init)] // one range to start with, on purpose
        let mut pending: Vec<std::ops::Range<usize>> = vec![0..batch.len()];
        while let Some(range) = pending.pop() {
            self.next_savepoint("ferry_rows", self.savepoint).await?;
            self.savepoint = true;
            match self.copy_rows(&batch[range.clone()]).await {
                Ok(()) => {}
                Err(e) if is_data_error(&e) => {
                    self.execute(
                        "rolling back to a savepoint",
                        "ROLLBACK TO SAVEPOINT ferry_rows",
                    )
                    .await?;
                    if range.len() == 1 {
                        rejected.push(Rejected {
                            index: range.start,
                            error: ConnectorError::Fatal(refusal(&e)),
                        });
                    } else {
                        let mid = range.start + range.len() / 2;
                        // Popped in source order: first half last in.
                        pending.push(mid..range.end);
                        pending.push(range.start..mid);
                    }
                }
                Err(e) => {
                    return Err(db_error(
                        &format!("writing rows into {}", self.config.table),
                        e,
                    ));
                }
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(rejected)
    }

    async fn commit(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        self.start_commit(positions).await?.await
    }

    /// Finishes the transaction's COPY, stores the positions and commits
    /// on a task of its own; the next write starts a transaction on the
    /// other connection meanwhile.
    async fn start_commit(
        &mut self,
        positions: &Positions,
    ) -> Result<PendingCommit, ConnectorError> {
        self.begin().await?;
        // Each moved position is stored only over the one this sink read
        // or stored last (a compare-and-set): should another process have
        // committed this pipeline's positions meanwhile — the same pipeline
        // run twice, under two data folders, say — the count comes out
        // short, the transaction is rolled back with its rows, and the
        // pipeline starts again from what that process committed. So two
        // writers never store a row twice.
        let (mut moved, mut to) = (Vec::new(), Vec::new());
        let (mut from, mut from_owner): (Vec<Option<String>>, Vec<Option<String>>) =
            (Vec::new(), Vec::new());
        let (mut added, mut added_to) = (Vec::new(), Vec::new());
        for p in positions.iter() {
            let text = serde_json::to_string(p).expect("positions serialize");
            // Unchanged: not stored, and what the previous owner left stays
            // the value the first commit of the partition stores over.
            if self.stored.get(&p.partition.key) == Some(&text) {
                continue;
            }
            let old = self.stored.get(&p.partition.key).cloned();
            let owner = self.handed_over.remove(&p.partition.key);
            if old.is_none() && owner.is_none() {
                added.push(p.partition.key.clone());
                added_to.push(text.clone());
            } else {
                // Stored over either value (a NULL matches nothing).
                moved.push(p.partition.key.clone());
                from.push(old);
                from_owner.push(owner);
                to.push(text.clone());
            }
            // A commit that fails drops the sink: no need to undo.
            self.stored.insert(p.partition.key.clone(), text);
        }
        let expected = (moved.len() + added.len()) as i64;
        let store = format!(
            "WITH moved AS (UPDATE {o} o SET position = u.v::jsonb, updated_at = now() \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u(p, old, owner, v) \
             WHERE o.pipeline = $1 AND o.partition = u.p \
             AND (o.position = u.old::jsonb OR o.position = u.owner::jsonb) RETURNING 1), \
             added AS (INSERT INTO {o} (pipeline, partition, position) \
             SELECT $1, p, v::jsonb FROM unnest($6::text[], $7::text[]) AS n(p, v) \
             ON CONFLICT (pipeline, partition) DO NOTHING RETURNING 1) \
             SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM added)",
            o = self.offsets
        );
        let offsets_table = self.config.offsets_table.clone();
        let pipeline = self.pipeline.clone();
        let plan = self.stream.take().map(|s| self.finish_plan(s));
        let conn = self.conn.take();
        let spare = self.spare.clone();
        let careful = self.config.careful.clone();
        let uncommitted = self.uncommitted;
        let table = self.config.table.clone();
        self.in_transaction = false;
        self.uncommitted = 0;
        let commit = async move {
            let mut conn = match plan {
                Some(plan) => {
                    let (conn, result) = finish(plan).await?;
                    result.map_err(|e| copy_failed(&careful, uncommitted, &table, e))?;
                    conn
                }
                None => conn.expect("begin() left a connection"),
            };
            let stored: i64 = sqlx::query_scalar(AssertSqlSafe(store))
                .bind(&pipeline)
                .bind(moved)
                .bind(from)
                .bind(from_owner)
                .bind(to)
                .bind(added)
                .bind(added_to)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| db_error("storing positions", e))?;
            if stored != expected {
                // Dropping the connection rolls the transaction back.
                return Err(ConnectorError::Retriable(format!(
                    "another process committed positions of pipeline {pipeline} in \
                     {offsets_table} meanwhile (is this pipeline running twice, under two data \
                     folders?): this transaction is rolled back with its rows, and the pipeline \
                     starts again from the committed positions"
                )));
            }
            exec(&mut conn, "COMMIT")
                .await
                .map_err(|e| db_error("committing", e))?;
            *spare.lock().expect("not poisoned") = Some(conn);
            Ok(())
        };
        if std::mem::take(&mut self.created_table) {
            // The other connection's staging table is made from the table.
            commit.await?;
            return Ok(Box::pin(std::future::ready(Ok(()))));
        }
        Ok(Box::pin(commit))
    }

    async fn close(&mut self) {
        self.close_conn().await;
    }
}
