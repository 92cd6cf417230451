//! The target table: its columns mapped onto record fields, created from
//! the first records when asked, and the staging table upserts go through.

use ferry_api::{ConnectorError, Record, Value};
use sqlx::Row;

use super::PostgresSink;
use crate::column_types::{column_type, identifier_prefix};
use crate::config::{Columns, Mode, split_table};
use crate::sql::{db_error, quote};

impl PostgresSink {
    /// Reads the table's columns and maps fields onto them. Returns false
    /// when the table does not exist.
    pub(crate) async fn resolve_columns(&mut self) -> Result<bool, ConnectorError> {
        let (schema, table) = split_table(&self.table).expect("a table name");
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_optional(self.conn())
        .await
        .map_err(|e| db_error("looking up the table", e))?;
        // COPY FROM takes plain, partitioned and foreign tables, and views
        // with INSTEAD OF triggers: a view only when it is the configured
        // table (whoever set it up knows it takes rows).
        let configured = self.config.table.fixed() == Some(self.table.as_str());
        match kind.as_deref() {
            None => return Ok(false),
            Some("r" | "p" | "f") => {}
            Some("v") if configured => {}
            Some(other) => {
                let what = match other {
                    "v" => "a view",
                    "m" => "a materialized view",
                    "S" => "a sequence",
                    "f" => "a foreign table",
                    "i" | "I" => "an index",
                    _ => "not a plain table",
                };
                return Err(ConnectorError::Fatal(format!(
                    "{} is {what}: rows go into tables",
                    self.table
                )));
            }
        }
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
                        self.table
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
                    self.table
                )));
            }
        }
        Ok(true)
    }

    pub(super) fn missing_table(&self) -> ConnectorError {
        ConnectorError::Fatal(format!(
            "table {} does not exist (or has no columns visible to this user); \
             create it, or set create_table: true",
            self.table
        ))
    }

    /// For `mode: upsert`: the per-connection staging table rows are COPYed
    /// into before the `INSERT … ON CONFLICT`.
    pub(super) async fn create_stage(&mut self) -> Result<(), ConnectorError> {
        if self.config.mode != Mode::Upsert || self.table.is_empty() {
            return Ok(());
        }
        let stage = format!(
            "DROP TABLE IF EXISTS {s}; CREATE TEMP TABLE {s} AS SELECT * FROM {} WITH NO DATA; \
             ALTER TABLE {s} ADD COLUMN ferry_ord bigint GENERATED ALWAYS AS IDENTITY",
            self.target,
            s = self.stage
        );
        self.execute("creating the staging table", &stage).await
    }

    /// Upserts: a connection made while another table was being written
    /// lacks this table's staging table, and one made inside a transaction
    /// is undone by its rollback; so each transaction and each switch of
    /// table makes it if it is missing (without the notices of `IF NOT
    /// EXISTS`).
    pub(super) fn ensure_stage_sql(&self) -> Option<String> {
        // One table all along: its staging table was made with the
        // connection, outside any transaction.
        let one_table = self.parked.is_empty() && self.config.table.fixed() == Some(&self.table);
        if self.config.mode != Mode::Upsert
            || self.table.is_empty()
            || self.pending_create
            || one_table
        {
            return None;
        }
        Some(format!(
            "DO $$ BEGIN IF to_regclass('pg_temp.{s}') IS NULL THEN \
             CREATE TEMP TABLE {s} AS SELECT * FROM {} WITH NO DATA; \
             ALTER TABLE {s} ADD COLUMN ferry_ord bigint GENERATED ALWAYS AS IDENTITY; \
             END IF; END $$",
            self.target,
            s = self.stage
        ))
    }

    /// Why the table cannot be created from `batch`, if it cannot: asked
    /// before a table named by records is created, as a failed `CREATE`
    /// would end the whole transaction (its schema is missing, its key is
    /// not among the fields, no field can be a column).
    pub(super) async fn cannot_create(
        &mut self,
        batch: &[&Record],
    ) -> Result<Option<String>, ConnectorError> {
        if let Err(why) = self.create_fields(batch) {
            return Ok(Some(format!("{}: {why}", self.table)));
        }
        let (schema, table) = split_table(&self.table).expect("a table name");
        let (exists, may_create, name_taken): (bool, bool, bool) = sqlx::query_as(
            "SELECT n.oid IS NOT NULL, n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'CREATE'), \
             EXISTS (SELECT 1 FROM pg_type t WHERE t.typnamespace = n.oid AND t.typname = $2) \
             FROM (SELECT $1::text AS name) s LEFT JOIN pg_namespace n ON n.nspname = s.name",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_one(self.conn())
        .await
        .map_err(|e| db_error("looking up the table's schema", e))?;
        Ok(if !exists {
            Some(format!(
                "{}: schema {schema} does not exist (create_table makes tables, not schemas)",
                self.table
            ))
        } else if !may_create {
            Some(format!(
                "{}: this user may not create tables in schema {schema}",
                self.table
            ))
        } else if name_taken {
            Some(format!(
                "{}: a type of that name exists in schema {schema}",
                self.table
            ))
        } else {
            None
        })
    }

    /// The `(field, column)` pairs `create_table` makes columns of.
    fn create_fields(&self, batch: &[&Record]) -> Result<Vec<(String, String)>, String> {
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
                            tracing::warn!(table = %self.table, field = %n, "create_table: this field cannot be a column of its own (empty, or the same as another within PostgreSQL's 63-byte names); it is not stored");
                        }
                        ok
                    })
                    .map(|n| (n.clone(), n))
                    .collect()
            }
        };
        for k in &self.config.key {
            if !fields.iter().any(|(_, c)| c == k) {
                return Err(format!(
                    "create_table: key column `{k}` is not among the fields of the first records"
                ));
            }
        }
        if fields.is_empty() {
            return Err("create_table: the first records have no field to make a column of".into());
        }
        Ok(fields)
    }

    /// `create_table: true`: creates the table from the fields of the first
    /// batch, inside the batch's transaction (a crash undoes both).
    pub(super) async fn create_table(&mut self, batch: &[&Record]) -> Result<(), ConnectorError> {
        let fields = self.create_fields(batch).map_err(ConnectorError::Fatal)?;
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
        self.execute(&format!("creating table {}", self.table), &sql)
            .await?;
        if !self.resolve_columns().await? {
            return Err(self.missing_table());
        }
        self.create_stage().await?;
        self.pending_create = false;
        self.created_table = true;
        tracing::info!(table = %self.table, "created the table from the first records");
        Ok(())
    }
}
