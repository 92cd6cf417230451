//! The PostgreSQL source: polls a table (or a query) in cursor order, and
//! reads only rows whose cursor values can no longer be overtaken by a
//! transaction still in flight.
//!
//! ## The in-flight guard (why a plain `WHERE id > $cursor` loses rows)
//!
//! Sequence values are handed out when a row is written, but become visible
//! when its transaction commits. If transaction A takes id 5 and B takes id
//! 6, and B commits first, a naive poller reads 6, moves its cursor past 5,
//! and never sees 5 when A commits. The same holds for timestamps.
//!
//! The guard is a *fence* on PostgreSQL's transaction snapshot. At a poll the
//! source notes the largest cursor value visible, `M`, and the snapshot's
//! `xmax` (every transaction id below it had started writing by then). Rows
//! up to `M` are read only once the oldest transaction still in flight
//! (`pg_snapshot_xmin`) is at or past that `xmax`, i.e. every transaction
//! that was writing when `M` was seen has committed or rolled back. A
//! transaction that could still commit a value below `M` must have taken its
//! value before `M` existed and therefore been writing then — so it is
//! finished. When nothing at all is in flight, the current `M` is final at
//! once.
//!
//! The rule's one assumption: a cursor value is taken by the transaction's
//! writes (a sequence or identity default, `now()` or `clock_timestamp()` set
//! by the writing statement or a trigger). A transaction that reserves a value
//! *before its first write* (say `SELECT nextval(…)` and a later `INSERT`) is
//! invisible to any snapshot until it writes, so no polling guard can see it;
//! a long-running transaction holds the fence, so new rows wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_api::{
    ConnectorError, Invalid, Partition, Position, Positions, Record, Source, SourceContext,
    SourceItem, Value,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use crate::config::{PostgresSourceConfig, split_table};
use crate::sql::{db_error, quote};

mod statements;

use statements::{Column, Statements};

/// The temporary view a `query:` is wrapped in, so tables and queries are
/// read the same way.
const VIEW: &str = "ferry_source";

/// Rows up to `max` become final once the oldest in-flight transaction is at
/// or past `xmax`, and every transaction that was writing to the source's
/// tables then has ended (`writers`: their virtual transaction ids).
struct Fence {
    xmax: u64,
    max: Option<Vec<String>>,
    writers: Vec<String>,
}

pub(crate) struct PostgresSource {
    config: PostgresSourceConfig,
    conn: Option<PgConnection>,
    partition: Arc<Partition>,
    /// The last cursor read (the resume point), as PostgreSQL's text forms.
    cursor: Option<Vec<String>>,
    /// Rows with cursor values up to here are final.
    safe_upper: Option<Vec<String>>,
    fence: Option<Fence>,
    /// The safe upper bound the last empty read reached.
    caught_up_to: Option<Vec<String>>,
    last_refresh: Option<Instant>,
    /// The statements, built on open from the relation's columns.
    statements: Statements,
    /// For the connection's `application_name`.
    pipeline: String,
}

impl PostgresSource {
    pub(crate) fn new(config: PostgresSourceConfig, pipeline: String) -> Self {
        let origin = config.origin();
        PostgresSource {
            pipeline,
            partition: Arc::new(Partition::new(format!("postgres:{origin}")).labelled(origin)),
            config,
            conn: None,
            cursor: None,
            safe_upper: None,
            fence: None,
            caught_up_to: None,
            last_refresh: None,
            statements: Statements::default(),
        }
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("used after open")
    }

    /// What a cursor looks like in this mode, for a refusal.
    pub(crate) fn cursor_shape(&self) -> String {
        match self.config.cursor_columns().as_slice() {
            [one] => format!("the text of {one:?} (a JSON string)"),
            many => format!("an array of the texts of {many:?} (JSON strings)"),
        }
    }

    /// The committed cursor, in the shape this mode stores.
    pub(crate) fn cursor_from(&self, offset: &Value) -> Option<Vec<String>> {
        let n = self.config.cursor_columns().len();
        match offset {
            Value::String(s) if n == 1 => Some(vec![s.clone()]),
            Value::Array(items) if items.len() == n => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => None,
        }
    }

    pub(crate) fn offset_of(cursor: &[String]) -> Value {
        match cursor {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        }
    }

    /// Reads the next rows after the cursor up to the safe upper bound.
    async fn read(&mut self, limit: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let Some(upper) = self.safe_upper.clone() else {
            return Ok(Vec::new());
        };
        let sql = if self.cursor.is_some() {
            &self.statements.read_next
        } else {
            &self.statements.read_first
        };
        let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
        if let Some(cursor) = &self.cursor {
            for v in cursor {
                q = q.bind(v.clone());
            }
        }
        for v in upper {
            q = q.bind(v);
        }
        let rows = q
            .bind(limit as i64)
            .fetch_all(self.conn())
            .await
            .map_err(|e| db_error(&format!("reading {}", self.config.origin()), e))?;
        if rows.is_empty() {
            self.caught_up_to = self.safe_upper.clone();
        }
        let n = self.config.cursor_columns().len();
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let json: String = row
                .try_get(0)
                .map_err(|e| db_error(&format!("reading {}", self.config.origin()), e))?;
            let cursor: Vec<String> = (1..=n)
                .map(|i| row.try_get::<String, _>(i))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    db_error(
                        &format!("reading the cursor of {}", self.config.origin()),
                        e,
                    )
                })?;
            let position = Position {
                partition: self.partition.clone(),
                offset: Self::offset_of(&cursor),
            };
            self.cursor = Some(cursor);
            items.push(match serde_json::from_str::<Value>(&json) {
                Ok(value) => SourceItem::Record(Record::new(value, position)),
                // row_to_json always gives JSON; kept for safety, not silence.
                Err(e) => SourceItem::Invalid(Invalid {
                    raw: json.chars().take(1024).collect::<String>().into(),
                    error: e.to_string(),
                    position,
                }),
            });
        }
        Ok(items)
    }

    /// The relation rows are read from, quoted: the table, or a temporary
    /// view wrapping the query (so tables and queries are read the same way).
    async fn relation(&mut self) -> Result<String, ConnectorError> {
        match (&self.config.table, &self.config.query) {
            (Some(table), _) => {
                let (schema, table) = split_table(table).expect("validated");
                Ok(format!("{}.{}", quote(&schema), quote(&table)))
            }
            (None, Some(query)) => {
                let view = format!("CREATE OR REPLACE TEMP VIEW {VIEW} AS {query}");
                sqlx::raw_sql(AssertSqlSafe(view))
                    .execute(self.conn())
                    .await
                    .map_err(|e| db_error("preparing the source query", e))?;
                Ok(format!("pg_temp.{VIEW}"))
            }
            (None, None) => unreachable!("validated"),
        }
    }

    /// The relation's columns in order; an error when it has none visible.
    async fn columns(&mut self, relation: &str) -> Result<Vec<Column>, ConnectorError> {
        let origin = self.config.origin();
        let rows = sqlx::query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        )
        .bind(relation)
        .fetch_all(self.conn())
        .await
        .map_err(|e| db_error(&format!("reading the columns of {origin}"), e))?;
        if rows.is_empty() {
            return Err(ConnectorError::Fatal(format!(
                "table {origin} does not exist (or has no columns visible to this user)"
            )));
        }
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect())
    }

    /// The tables rows come from (for a `query:`, every table its view
    /// reads), by oid: writers to them are watched by the fence.
    async fn watched_tables(&mut self, relation: &str) -> Result<Vec<i64>, ConnectorError> {
        sqlx::query_scalar(
            "SELECT to_regclass($1)::oid::bigint WHERE (SELECT relkind FROM pg_class WHERE oid = to_regclass($1)) <> 'v' \
             UNION SELECT DISTINCT d.refobjid::bigint FROM pg_rewrite r JOIN pg_depend d \
             ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass \
             WHERE r.ev_class = to_regclass($1) AND d.refobjid <> r.ev_class",
        )
        .bind(relation)
        .fetch_all(self.conn())
        .await
        .map_err(|e| db_error("finding the tables the source reads", e))
    }

    /// Looks at the snapshot and moves the safe upper bound when a fence has
    /// cleared. Returns whether the bound may have moved.
    async fn refresh_fence(&mut self) -> Result<bool, ConnectorError> {
        self.last_refresh = Some(Instant::now());
        let sql = self.statements.refresh.clone();
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(self.conn())
            .await
            .map_err(|e| db_error("reading the transaction snapshot", e))?;
        let parse = |s: String| {
            s.parse::<u64>()
                .map_err(|e| ConnectorError::Fatal(format!("snapshot xid {s:?}: {e}")))
        };
        let xmin = parse(
            row.try_get(0)
                .map_err(|e| db_error("reading the snapshot", e))?,
        )?;
        let xmax = parse(
            row.try_get(1)
                .map_err(|e| db_error("reading the snapshot", e))?,
        )?;
        let max: Option<Vec<String>> = row
            .try_get(2)
            .map_err(|e| db_error("reading the snapshot", e))?;
        // A transaction writing to the source's tables holds a row-exclusive
        // lock on them from the start of its statement, before its sequence
        // value (or timestamp) is taken; but it has no transaction id, and so
        // no place in the snapshot, until its first row is written. In that
        // window a later row can be visible and committed: without this
        // list, its cursor value would be taken as final and the earlier
        // row, committed next, skipped (seen under load in
        // `postgres_to_file_exactly_once_with_out_of_order_commits_and_sigkill`).
        let writers: Vec<String> = row
            .try_get::<Option<Vec<String>>, _>(3)
            .map_err(|e| db_error("reading the snapshot", e))?
            .unwrap_or_default();
        let mut moved = false;
        if let Some(fence) = &self.fence
            && xmin >= fence.xmax
            && !fence.writers.iter().any(|w| writers.contains(w))
        {
            if fence.max.is_some() {
                self.safe_upper = fence.max.clone();
                moved = true;
            }
            self.fence = None;
        }
        if xmin == xmax && writers.is_empty() {
            // Nothing is in flight: what is visible now is final.
            if max.is_some() {
                self.safe_upper = max;
                moved = true;
            }
            self.fence = None;
        } else if self.fence.is_none() {
            self.fence = Some(Fence { xmax, max, writers });
        }
        Ok(moved)
    }
}

impl PostgresSource {
    /// The rows after the committed cursor, counted up to
    /// [`statements::LAG_CAP`] (then an estimate: at least that many).
    /// Rows not yet final (behind a fence) count too: they are there.
    pub(crate) async fn rows_after(
        &mut self,
        committed: &Positions,
    ) -> Result<(u64, bool), ConnectorError> {
        let cursor = committed
            .get(&self.partition.key)
            .and_then(|p| self.cursor_from(&p.offset));
        let sql = match cursor {
            Some(_) => self.statements.lag_next.clone(),
            None => self.statements.lag_first.clone(),
        };
        let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
        for v in cursor.into_iter().flatten() {
            q = q.bind(v);
        }
        let origin = self.config.origin();
        let n = q
            .fetch_one(self.conn())
            .await
            .map_err(|e| db_error(&format!("counting the rows of {origin} not yet read"), e))?;
        Ok((n.max(0) as u64, n >= statements::LAG_CAP))
    }

    /// How people know the source's one partition, and its key.
    pub(crate) fn partition(&self) -> &Partition {
        &self.partition
    }
}

#[async_trait]
impl Source for PostgresSource {
    async fn open(
        &mut self,
        committed: &Positions,
        _: &SourceContext,
    ) -> Result<(), ConnectorError> {
        self.conn = Some(crate::net::connect(&self.config.url, &self.pipeline).await?);
        // UTC, so timestamps come out as RFC 3339 with +00:00 and cursor
        // values round-trip exactly.
        sqlx::raw_sql("SET TIME ZONE 'UTC'")
            .execute(self.conn())
            .await
            .map_err(|e| db_error("setting the session time zone", e))?;
        let relation = self.relation().await?;
        let columns = self.columns(&relation).await?;
        let watched = self.watched_tables(&relation).await?;
        let cursor = self.config.cursor_columns();
        self.statements =
            Statements::build(&relation, &columns, &cursor, &watched).map_err(|c| {
                ConnectorError::Fatal(format!(
                    "cursor column `{c}` is not a column of {}",
                    self.config.origin()
                ))
            })?;
        if let Some(p) = committed.get(&self.partition.key) {
            self.cursor = Some(self.cursor_from(&p.offset).ok_or_else(|| {
                ConnectorError::Fatal(format!(
                    "the committed position {} does not fit cursor ({}); was the mode changed? \
                     `ferry offsets reset` starts over",
                    p.offset,
                    cursor.join(", ")
                ))
            })?);
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let limit = max.min(self.config.batch_size).max(1);
        let items = self.read(limit).await?;
        if !items.is_empty() {
            return Ok(items);
        }
        // Caught up with what is final: look at the snapshot again, at most
        // once per poll interval.
        let due = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= self.config.poll_interval);
        if due && self.refresh_fence().await? {
            let items = self.read(limit).await?;
            if !items.is_empty() {
                return Ok(items);
            }
        }
        let wait = self
            .config
            .poll_interval
            .saturating_sub(self.last_refresh.map_or(Duration::ZERO, |t| t.elapsed()))
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        Ok(Vec::new())
    }

    /// Idle unless a fence is pending that will reveal rows not read yet.
    fn idle(&self) -> bool {
        match &self.fence {
            None => true,
            Some(f) => f.max.is_none() || f.max == self.caught_up_to || f.max == self.cursor,
        }
    }

    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}
