//! The offsets table: the positions stored in the same transaction as the
//! rows, read back at `open`, and moved by compare-and-set at each commit.

use ferry_api::{ConnectorError, Position, Positions};
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::PostgresSink;
use crate::sql::db_error;

/// The positions a commit stores, each over the value it is known to hold.
pub(super) struct PositionUpdate {
    /// The statement, its binds below.
    sql: String,
    moved: Vec<String>,
    from: Vec<Option<String>>,
    from_owner: Vec<Option<String>>,
    to: Vec<String>,
    added: Vec<String>,
    added_to: Vec<String>,
    /// Rows the statement must touch: fewer means another writer.
    expected: i64,
}

impl PostgresSink {
    /// Creates the offsets table if it is missing.
    pub(super) async fn create_offsets_table(&mut self) -> Result<(), ConnectorError> {
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
        Ok(())
    }

    /// The positions the offsets table holds for this pipeline.
    pub(super) async fn read_positions(&mut self) -> Result<Positions, ConnectorError> {
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

    /// Remembers what the table holds now, as JSON text for comparison with
    /// what is stored next.
    pub(super) fn remember_stored(&mut self, positions: &Positions) {
        self.stored = positions
            .iter()
            .map(|p| (p.partition.key.clone(), position_text(p)))
            .collect();
    }

    /// The update of the positions that moved since the last commit.
    pub(super) fn position_update(&mut self, positions: &Positions) -> PositionUpdate {
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
            let text = position_text(p);
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
        PositionUpdate {
            sql: store,
            moved,
            from,
            from_owner,
            to,
            added,
            added_to,
            expected,
        }
    }
}

impl PositionUpdate {
    /// Stores the positions in the transaction of `conn`. An error when
    /// another process stored positions of `pipeline` meanwhile: the
    /// caller drops the connection, which rolls the transaction back.
    pub(super) async fn store(
        self,
        conn: &mut PgConnection,
        pipeline: &str,
        offsets_table: &str,
    ) -> Result<(), ConnectorError> {
        let stored: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql))
            .bind(pipeline)
            .bind(self.moved)
            .bind(self.from)
            .bind(self.from_owner)
            .bind(self.to)
            .bind(self.added)
            .bind(self.added_to)
            .fetch_one(conn)
            .await
            .map_err(|e| db_error("storing positions", e))?;
        if stored != self.expected {
            return Err(ConnectorError::Retriable(format!(
                "another process committed positions of pipeline {pipeline} in \
                 {offsets_table} meanwhile (is this pipeline running twice, under two data \
                 folders?): this transaction is rolled back with its rows, and the pipeline \
                 starts again from the committed positions"
            )));
        }
        Ok(())
    }
}

/// A position as the table's JSON text, for comparisons.
pub(super) fn position_text(p: &Position) -> String {
    serde_json::to_string(p).expect("positions serialize")
}
