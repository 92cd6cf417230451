//! After the database refused a row of a streamed batch: the replay goes
//! chunk by chunk under savepoints, splitting a chunk until each refused row
//! stands alone, so the good rows still arrive and the refused ones are
//! reported.

use bytes::Bytes;
use ferry_api::{ConnectorError, Record, Rejected};

use super::PostgresSink;
use super::stream::{column_list, copy_in};
use crate::config::Mode;
use crate::sql::{db_error, is_data_error, refusal};

impl PostgresSink {
    /// Writes `batch` isolating refused rows; returns them.
    pub(super) async fn write_isolating(
        &mut self,
        batch: &[&Record],
    ) -> Result<Vec<Rejected>, ConnectorError> {
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
                    return Err(db_error(&format!("writing rows into {}", self.table), e));
                }
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(rejected)
    }

    /// One chunk under a savepoint (isolating a refused row): COPYs `rows` into the
    /// target (insert) or through the staging table (upsert).
    async fn copy_rows(&mut self, rows: &[&Record]) -> Result<(), sqlx::Error> {
        for (run, cols) in self.column_runs(rows) {
            self.copy_run(run, &cols).await?;
        }
        Ok(())
    }

    async fn copy_run(
        &mut self,
        rows: &[&Record],
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
}
