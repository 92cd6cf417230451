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
//!
//! Records may name their tables (`table: {field: …}`, or a `route`
//! transform): a batch is split by table, keeping each table's records in
//! order, and each table's rows get a COPY of their own — all in the one
//! transaction that also stores the positions. One table is written at a
//! time (a connection runs one COPY); the others are parked with what was
//! learnt of them (columns, staging table). A record whose table does not
//! exist (and `create_table` is off) or whose name is no table name is
//! refused, and goes where the pipeline's tolerance sends refused records.
//!
//! Files by job: `stream.rs` (the COPY stream and the upsert route),
//! `isolate.rs` (the replay that isolates refused rows), `table.rs` (column
//! mapping, `create_table`, the staging table), `offsets.rs` (the offsets
//! table); this file holds the sink's connections and transactions.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_api::{ConnectorError, PendingCommit, Positions, Record, Rejected, Sink};
// Every dynamic SQL string here interpolates only identifiers that were
// validated as plain names and are quoted; values are bound.
use sqlx::{Connection, PgConnection};

use crate::config::{PostgresSinkConfig, TABLE_NAME, split_table};
use crate::sql::{db_error, quote};
use offsets::position_text;
use stream::{CopyStream, UpsertRoute, copy_failed, exec, finish};

mod isolate;
mod offsets;
mod stream;
mod table;

/// Consecutive rows and the columns they give values for: (field, column,
/// whether the column takes JSON).
type ColumnRun<'r> = (&'r [&'r Record], Vec<(String, String, bool)>);

/// Per-connection temporary table the rows are COPYed into (for the first
/// table; the others' get a number).
const STAGE: &str = "ferry_stage";

const LOCK_TIMEOUT: &str = "SET lock_timeout = '60s'";

/// Schemas no record may route rows into: the catalogs, and other
/// sessions' temporary tables.
const SYSTEM_SCHEMAS: [&str; 3] = ["pg_catalog", "information_schema", "pg_toast"];

/// A table this sink wrote to in its life, while another is written.
struct Parked {
    target: String,
    stage: String,
    mapping: Vec<(String, String, bool)>,
    pending_create: bool,
    upsert_route: Arc<UpsertRoute>,
}

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
    /// Records of this life to write with a savepoint per chunk, isolating
    /// a refused row: taken at `open` from what the life before left.
    isolating: usize,
    /// Where a life that meets a refused row leaves that count for the next
    /// ([`crate::PostgresSinkDefinition`]).
    isolate_next: Arc<AtomicUsize>,
    /// This transaction created the table: its commit must be durable
    /// before the other connection can see the table.
    created_table: bool,
    /// The table being written, as named (`schema.table` or `table`);
    /// empty before the first write when records name their tables.
    table: String,
    /// `"schema"."table"`, quoted.
    target: String,
    /// The table's staging table (upserts).
    stage: String,
    /// The other tables written in this life, by name.
    parked: HashMap<String, Parked>,
    /// Tables met so far: numbers the staging tables.
    tables_met: usize,
    /// Held by the commit in flight: a switch of table waits for it (see
    /// [`PostgresSink::switch_to`]).
    commit_gate: Arc<tokio::sync::Semaphore>,
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
    upsert_route: Arc<UpsertRoute>,
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

impl PostgresSink {
    pub(crate) fn new(
        config: PostgresSinkConfig,
        pipeline: String,
        isolate_next: Arc<AtomicUsize>,
    ) -> Self {
        let (table, target) = match config.table.fixed() {
            Some(name) => (name.to_string(), quoted_table(name).expect("validated")),
            None => (String::new(), String::new()),
        };
        let (oschema, otable) = split_table(&config.offsets_table).expect("validated");
        PostgresSink {
            tables_met: usize::from(!table.is_empty()),
            table,
            target,
            stage: STAGE.to_string(),
            parked: HashMap::new(),
            commit_gate: Arc::new(tokio::sync::Semaphore::new(1)),
            offsets: format!("{}.{}", quote(&oschema), quote(&otable)),
            config,
            pipeline,
            conn: None,
            mapping: Vec::new(),
            pending_create: false,
            savepoint: false,
            stream: None,
            copy_savepoint: false,
            upsert_route: Arc::default(),
            spare: Arc::default(),
            isolating: 0,
            isolate_next,
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
        let mut conn = crate::net::connect(&self.config.url, &self.pipeline).await?;
        // Two transactions of this sink are open at once (one commits while
        // the next is written); should one ever wait on a row lock of the
        // other, neither ends, and the server cannot see it. A lock wait
        // this long fails the attempt instead, which replays from the
        // committed positions.
        exec(&mut conn, LOCK_TIMEOUT)
            .await
            .map_err(|e| db_error("setting lock_timeout", e))?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Everything `open` checks, without changing anything: for `ferry
    /// validate --check-connections`.
    pub(crate) async fn check(&mut self) -> Result<(), ConnectorError> {
        self.connect().await?;
        if self.table.is_empty() {
            // Records name their tables: none to check before they come.
            self.close_conn().await;
            return Ok(());
        }
        let found = self.resolve_columns().await;
        self.close_conn().await;
        match found? {
            true => Ok(()),
            false if self.config.create_table => Ok(()),
            false => Err(self.missing_table()),
        }
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
            // A routed table's staging table was made inside a transaction,
            // which a rollback undoes: made again (if missing) with BEGIN.
            let sql = match self.ensure_stage_sql() {
                Some(ensure) => format!("BEGIN; {ensure}"),
                None => "BEGIN".to_string(),
            };
            self.execute("starting a transaction", &sql).await?;
            self.in_transaction = true;
            self.savepoint = false;
            self.copy_savepoint = false;
        }
        Ok(())
    }
}

/// Why no record may go to table `name`, if none may: what is no table
/// name, a system schema, the offsets table.
pub(crate) fn destination_problem(name: &str, offsets_table: &str) -> Option<String> {
    let Some((schema, table)) = split_table(name) else {
        return Some(format!("`{name}` is no table name: it {TABLE_NAME}"));
    };
    if SYSTEM_SCHEMAS.contains(&schema.as_str()) || schema.starts_with("pg_temp") {
        return Some(format!(
            "`{name}` is in a system schema: records are not written there"
        ));
    }
    if split_table(offsets_table) == Some((schema, table)) {
        return Some(format!(
            "`{name}` is the offsets table: records are not written there"
        ));
    }
    None
}

/// `"schema"."table"` for a valid name.
fn quoted_table(name: &str) -> Option<String> {
    split_table(name).map(|(schema, table)| format!("{}.{}", quote(&schema), quote(&table)))
}

impl PostgresSink {
    /// The batch's records by table, each table's in their order (the
    /// tables in the order first met), and the records that name none.
    fn by_table(&self, batch: &[Record]) -> (Vec<(String, Vec<usize>)>, Vec<Rejected>) {
        if let Some(name) = self.config.table.fixed()
            && batch.iter().all(|r| r.destination.is_none())
        {
            return (
                vec![(name.to_string(), (0..batch.len()).collect())],
                Vec::new(),
            );
        }
        let mut tables: Vec<(String, Vec<usize>)> = Vec::new();
        // By the name as records give it: one lookup per record, and the
        // name made canonical once per name a batch holds.
        let mut place: HashMap<String, usize> = HashMap::new();
        let mut rejected = Vec::new();
        for (index, r) in batch.iter().enumerate() {
            let name = match self.config.table.of(r) {
                Ok(name) => name,
                Err(why) => {
                    rejected.push(Rejected {
                        index,
                        error: ConnectorError::Fatal(why),
                    });
                    continue;
                }
            };
            let at = match place.get(name.as_ref()) {
                Some(&at) => at,
                None => {
                    let table = self.same_name(&name);
                    let at = match tables.iter().position(|(t, _)| *t == table) {
                        Some(at) => at,
                        None => {
                            tables.push((table, Vec::new()));
                            tables.len() - 1
                        }
                    };
                    place.insert(name.into_owned(), at);
                    at
                }
            };
            tables[at].1.push(index);
        }
        (tables, rejected)
    }

    /// Records cannot go to the table being switched to: it is not kept,
    /// and is looked up again when a record names it next (someone may
    /// create it meanwhile).
    fn forget_table(&mut self) {
        self.table.clear();
    }

    /// One table under one name, so that its records are one stream, in
    /// order: the configured table as configured (`public.orders` is
    /// `orders`), any other as `schema.table`.
    fn same_name(&self, name: &str) -> String {
        let fixed = self.config.table.fixed();
        match split_table(name) {
            Some(parts) if fixed.and_then(split_table) == Some(parts.clone()) => {
                fixed.expect("compared").to_string()
            }
            Some((schema, table)) => format!("{schema}.{table}"),
            None => name.to_string(),
        }
    }

    /// Makes `name` the table the next rows go to, finishing the COPY into
    /// the one before. `Some(why)` when records cannot go there: refused.
    ///
    /// Finishing a stream writes into its table (an upsert moves its staged
    /// rows), which the commit in flight on the other connection may be
    /// about to write too: that commit is waited for first, or each of
    /// the two transactions would wait on the other's row locks.
    async fn switch_to(&mut self, name: &str) -> Result<Option<String>, ConnectorError> {
        if name == self.table {
            return Ok(None);
        }
        if let Some(why) = destination_problem(name, &self.config.offsets_table) {
            return Ok(Some(why));
        }
        let (schema, table) = split_table(name).expect("checked");
        let target = format!("{}.{}", quote(&schema), quote(&table));
        // Free once had: no commit starts while this write runs.
        drop(self.commit_gate.acquire().await);
        self.finish_stream().await?;
        let next = self.parked.remove(name);
        let known = next.is_some();
        let next = next.unwrap_or_else(|| {
            self.tables_met += 1;
            Parked {
                target,
                stage: format!("{STAGE}_{}", self.tables_met),
                mapping: Vec::new(),
                pending_create: false,
                upsert_route: Arc::default(),
            }
        });
        let before = Parked {
            target: std::mem::replace(&mut self.target, next.target),
            stage: std::mem::replace(&mut self.stage, next.stage),
            mapping: std::mem::replace(&mut self.mapping, next.mapping),
            pending_create: std::mem::replace(&mut self.pending_create, next.pending_create),
            upsert_route: std::mem::replace(&mut self.upsert_route, next.upsert_route),
        };
        let before_name = std::mem::replace(&mut self.table, name.to_string());
        if !before_name.is_empty() {
            self.parked.insert(before_name, before);
        }
        if !known {
            let refusal = match self.resolve_columns().await {
                Ok(true) => None,
                Ok(false) if self.config.create_table => {
                    self.pending_create = true;
                    None
                }
                Ok(false) => Some(self.missing_table().to_string()),
                Err(ConnectorError::Fatal(why)) => Some(why),
                Err(e) => return Err(e),
            };
            if let Some(why) = refusal {
                self.forget_table();
                return Ok(Some(why));
            }
        }
        if let Some(sql) = self.ensure_stage_sql() {
            self.execute("making the staging table", &sql).await?;
        }
        Ok(None)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        // Read once per life: a commit failing on its own task sets it for
        // the next life, and must not be consumed by this one's writes.
        self.isolating = self.isolate_next.swap(0, Relaxed);
        self.connect().await?;
        self.create_offsets_table().await?;
        if self.table.is_empty() {
            // Records name their tables: each is looked up when first met.
        } else if self.resolve_columns().await? {
            self.create_stage().await?;
        } else if self.config.create_table {
            self.pending_create = true;
        } else {
            return Err(self.missing_table());
        }

        let positions = self.read_positions().await?;
        self.remember_stored(&positions);
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
            self.handed_over
                .insert(p.partition.key.clone(), position_text(p));
        }
        Ok(vec![positions])
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.begin().await?;
        self.uncommitted += batch.len();
        // After a refused row, the replayed records go chunk by chunk.
        let isolating = self.isolating > 0;
        self.isolating = self.isolating.saturating_sub(batch.len());
        let (tables, mut rejected) = self.by_table(batch);
        for (table, indexes) in tables {
            if let Some(why) = self.switch_to(&table).await? {
                rejected.extend(indexes.iter().map(|&index| Rejected {
                    index,
                    error: ConnectorError::Fatal(why.clone()),
                }));
                continue;
            }
            let rows: Vec<&Record> = indexes.iter().map(|&i| &batch[i]).collect();
            if self.pending_create
                && self.config.table.fixed() != Some(self.table.as_str())
                && let Some(why) = self.cannot_create(&rows).await?
            {
                rejected.extend(indexes.iter().map(|&index| Rejected {
                    index,
                    error: ConnectorError::Fatal(why.clone()),
                }));
                self.forget_table();
                continue;
            }
            if self.pending_create {
                self.create_table(&rows).await?;
            }
            if isolating {
                let refused = self.write_isolating(&rows).await?;
                rejected.extend(refused.into_iter().map(|r| Rejected {
                    index: indexes[r.index],
                    error: r.error,
                }));
            } else {
                self.stream_rows(&rows).await?;
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
        let update = self.position_update(positions);
        let offsets_table = self.config.offsets_table.clone();
        let pipeline = self.pipeline.clone();
        let plan = self.stream.take().map(|s| self.finish_plan(s));
        let conn = self.conn.take();
        let spare = self.spare.clone();
        let isolate_next = self.isolate_next.clone();
        let gate = self.commit_gate.clone().try_acquire_owned().ok();
        let uncommitted = self.uncommitted;
        let table = self.table.clone();
        self.in_transaction = false;
        self.uncommitted = 0;
        let commit = async move {
            let _gate = gate;
            let mut conn = match plan {
                Some(plan) => {
                    let (conn, result) = finish(plan).await?;
                    result.map_err(|e| copy_failed(&isolate_next, uncommitted, &table, e))?;
                    conn
                }
                None => conn.expect("begin() left a connection"),
            };
            // An error drops the connection, which rolls the transaction back.
            update.store(&mut conn, &pipeline, &offsets_table).await?;
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
