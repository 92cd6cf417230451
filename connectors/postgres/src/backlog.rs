//! The polling source's lag: the rows after the committed cursor, counted
//! (up to a cap, past which it is an estimate) on a connection of its own.

use async_trait::async_trait;
use ferry_api::{Backlog, ConnectorError, Lag, Position, Positions, Source, SourceContext};

use crate::config::PostgresSourceConfig;
use crate::source::PostgresSource;

/// A source of its own, opened (connected, statements built) but never
/// polled: it only counts.
pub(crate) struct PostgresBacklog {
    source: PostgresSource,
    open: bool,
}

impl PostgresBacklog {
    pub(crate) fn new(config: PostgresSourceConfig, pipeline: String) -> Self {
        PostgresBacklog {
            source: PostgresSource::new(config, format!("{pipeline} (lag)")),
            open: false,
        }
    }
}

impl PostgresBacklog {
    /// The position of the source's partition at the cursor `offset`,
    /// checked by counting the rows after it (the server casts the cursor
    /// to the columns' types as the source's reads do).
    pub(crate) async fn resume_point(
        &mut self,
        partition: &str,
        offset: &ferry_api::Value,
    ) -> Result<Position, ConnectorError> {
        let key = self.source.partition().key.clone();
        if partition != key {
            return Err(ConnectorError::Fatal(format!(
                "this source has one partition, {key:?}"
            )));
        }
        let Some(cursor) = self.source.cursor_from(offset) else {
            return Err(ConnectorError::Fatal(format!(
                "the cursor of this source is {}",
                self.source.cursor_shape()
            )));
        };
        self.source
            .open(&Positions::new(), &SourceContext::detached())
            .await?;
        let position = Position {
            partition: std::sync::Arc::new(self.source.partition().clone()),
            offset: PostgresSource::offset_of(&cursor),
        };
        let mut at = Positions::new();
        at.advance(&position);
        let counted = self.source.rows_after(&at).await;
        self.source.close().await;
        counted.map_err(|e| match e {
            ConnectorError::Fatal(why) => ConnectorError::Fatal(format!(
                "{why} (is the cursor a value of its column's type?)"
            )),
            retriable => retriable,
        })?;
        Ok(position)
    }
}

#[async_trait]
impl Backlog for PostgresBacklog {
    async fn measure(&mut self, committed: &Positions) -> Result<Vec<Lag>, ConnectorError> {
        if !self.open {
            self.source
                .open(&Positions::new(), &SourceContext::detached())
                .await?;
            self.open = true;
        }
        let counted = self.source.rows_after(committed).await;
        let (rows, capped) = match counted {
            Ok(counted) => counted,
            Err(e) => {
                // A fresh connection next time.
                self.source.close().await;
                self.open = false;
                return Err(e);
            }
        };
        let partition = self.source.partition();
        Ok(vec![Lag {
            partition: partition.key.clone(),
            label: partition.label().to_string(),
            amount: rows as f64,
            unit: "rows",
            estimate: capped,
        }])
    }
}
