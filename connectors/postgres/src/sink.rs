//! The PostgreSQL sink: COPY into a staging table, move into the target, and
//! commit the positions in the same transaction.

use async_trait::async_trait;
use ferry_api::{ConnectorError, Position, Positions, Record, Rejected, Sink, Value};
// Every dynamic SQL string here interpolates only identifiers that were
// validated as plain names and are quoted; values are bound.
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use crate::config::{Mode, PostgresSinkConfig, split_table};

/// Per-connection temporary table the rows are COPYed into.
const STAGE: &str = "ferry_stage";

pub(crate) struct PostgresSink {
    config: PostgresSinkConfig,
    pipeline: String,
    conn: Option<PgConnection>,
    /// `"schema"."table"`, quoted.
    target: String,
    offsets: String,
    /// The target's columns, in table order.
    columns: Vec<String>,
    in_transaction: bool,
    buf: Vec<u8>,
}

/// Maps a database error to retriable (connection trouble, server shutting
/// down, serialization failure) or fatal, with what was being done.
fn db_error(context: &str, e: sqlx::Error) -> ConnectorError {
    let retriable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
        }),
        _ => false,
    };
    let message = format!("{context}: {e}");
    if retriable {
        ConnectorError::Retriable(message)
    } else {
        ConnectorError::Fatal(message)
    }
}

/// A row the database refuses (bad value, NOT NULL, unique, check): SQLSTATE
/// classes 22 and 23. Anything else is not the row's fault.
fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
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
            columns: Vec::new(),
            in_transaction: false,
            buf: Vec::new(),
        }
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("used after open")
    }

    async fn execute(&mut self, context: &str, sql: &str) -> Result<(), ConnectorError> {
        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(self.conn())
            .await
            .map_err(|e| db_error(context, e))?;
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), ConnectorError> {
        if !self.in_transaction {
            self.execute("starting a transaction", "BEGIN").await?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// COPYs `rows` into the staging table and moves them into the target.
    async fn copy_rows(&mut self, rows: &[Record]) -> Result<(), sqlx::Error> {
        // The columns these rows have values for (absent fields are NULL).
        let cols: Vec<String> = self
            .columns
            .iter()
            .filter(|c| {
                self.config.key.contains(c)
                    || rows.iter().any(|r| r.value.get(c.as_str()).is_some())
            })
            .cloned()
            .collect();
        if cols.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for (i, r) in rows.iter().enumerate() {
            for c in &cols {
                encode(r.value.get(c.as_str()).unwrap_or(&Value::Null), &mut buf);
                buf.push(b'\t');
            }
            buf.extend_from_slice(i.to_string().as_bytes());
            buf.push(b'\n');
        }
        let col_list = cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let copy = format!("COPY {STAGE} ({col_list}, ferry_ord) FROM STDIN (FORMAT text)");
        let copied: Result<(), sqlx::Error> = async {
            let mut copy_in = self.conn().copy_in_raw(&copy).await?;
            copy_in.send(buf.as_slice()).await?;
            copy_in.finish().await?;
            Ok(())
        }
        .await;
        self.buf = buf;
        copied?;
        let insert = match self.config.mode {
            Mode::Insert => {
                format!(
                    "INSERT INTO {} ({col_list}) SELECT {col_list} FROM {STAGE} ORDER BY ferry_ord",
                    self.target
                )
            }
            Mode::Upsert => {
                let keys = self
                    .config
                    .key
                    .iter()
                    .map(|k| quote(k))
                    .collect::<Vec<_>>()
                    .join(", ");
                let updates: Vec<String> = cols
                    .iter()
                    .filter(|c| !self.config.key.contains(c))
                    .map(|c| format!("{} = EXCLUDED.{}", quote(c), quote(c)))
                    .collect();
                let action = if updates.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    format!("DO UPDATE SET {}", updates.join(", "))
                };
                // DISTINCT ON keeps the last record of each key: one
                // statement may not update a row twice.
                format!(
                    "INSERT INTO {} ({col_list}) SELECT DISTINCT ON ({keys}) {col_list} FROM {STAGE} \
                     ORDER BY {keys}, ferry_ord DESC ON CONFLICT ({keys}) {action}",
                    self.target
                )
            }
        };
        sqlx::raw_sql(AssertSqlSafe(format!("{insert}; TRUNCATE {STAGE}")))
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        let conn = PgConnection::connect(&self.config.url)
            .await
            .map_err(|e| db_error("connecting to PostgreSQL", e))?;
        self.conn = Some(conn);
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

        let (schema, table) = split_table(&self.config.table).expect("validated");
        let rows = sqlx::query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(self.conn())
        .await
        .map_err(|e| db_error("reading the table's columns", e))?;
        self.columns = rows.iter().map(|r| r.get::<String, _>(0)).collect();
        if self.columns.is_empty() {
            return Err(ConnectorError::Fatal(format!(
                "table {} does not exist (or has no columns visible to this user)",
                self.config.table
            )));
        }
        for k in &self.config.key {
            if !self.columns.contains(k) {
                return Err(ConnectorError::Fatal(format!(
                    "key column `{k}` is not a column of {}",
                    self.config.table
                )));
            }
        }
        let stage = format!(
            "DROP TABLE IF EXISTS {STAGE}; CREATE TEMP TABLE {STAGE} AS SELECT * FROM {} WITH NO DATA; \
             ALTER TABLE {STAGE} ADD COLUMN ferry_ord bigint",
            self.target
        );
        self.execute("creating the staging table", &stage).await?;

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
        Ok(Some(positions))
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.begin().await?;
        // The whole chunk first; if the database refuses a row, split the
        // chunk under savepoints until every refused row stands alone, so the
        // good rows of the chunk still arrive.
        let mut rejected = Vec::new();
        // A stack of row ranges still to write; it starts as the whole chunk.
        #[allow(clippy::single_range_in_vec_init)] // one range to start with, on purpose
        let mut pending: Vec<std::ops::Range<usize>> = vec![0..batch.len()];
        while let Some(range) = pending.pop() {
            self.execute("setting a savepoint", "SAVEPOINT ferry_rows")
                .await?;
            match self.copy_rows(&batch[range.clone()]).await {
                Ok(()) => {
                    self.execute("releasing a savepoint", "RELEASE SAVEPOINT ferry_rows")
                        .await?
                }
                Err(e) if is_data_error(&e) => {
                    self.execute(
                        "rolling back to a savepoint",
                        "ROLLBACK TO SAVEPOINT ferry_rows",
                    )
                    .await?;
                    if range.len() == 1 {
                        let message = match &e {
                            sqlx::Error::Database(db) => db.message().to_string(),
                            other => other.to_string(),
                        };
                        rejected.push(Rejected {
                            index: range.start,
                            error: ConnectorError::Fatal(message),
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
        self.begin().await?;
        let (keys, values): (Vec<String>, Vec<String>) = positions
            .iter()
            .map(|p| {
                (
                    p.partition.key.clone(),
                    serde_json::to_string(p).expect("positions serialize"),
                )
            })
            .unzip();
        let sql = format!(
            "INSERT INTO {} (pipeline, partition, position) SELECT $1, p, v::jsonb FROM unnest($2::text[], $3::text[]) AS u(p, v) \
             ON CONFLICT (pipeline, partition) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
            self.offsets
        );
        let pipeline = self.pipeline.clone();
        sqlx::query(AssertSqlSafe(sql))
            .bind(pipeline)
            .bind(keys)
            .bind(values)
            .execute(self.conn())
            .await
            .map_err(|e| db_error("storing positions", e))?;
        self.execute("committing", "COMMIT").await?;
        self.in_transaction = false;
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            // An open transaction rolls back with the connection.
            let _ = conn.close().await;
        }
    }
}

/// One value in COPY's text format.
fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => escape(s.as_bytes(), out),
        other => escape(other.to_string().as_bytes(), out),
    }
}

fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn copy_text_encoding() {
        let mut out = Vec::new();
        for v in [
            json!(null),
            json!(true),
            json!(1.5),
            json!("a\tb\\c\nd"),
            json!({"k": [1]}),
        ] {
            encode(&v, &mut out);
            out.push(b'|');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\\N|t|1.5|a\\tb\\\\c\\nd|{\"k\":[1]}|"
        );
    }
}
