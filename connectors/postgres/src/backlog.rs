//! The polling source's lag: the rows after the committed cursor, counted
//! (up to a cap, past which it is an estimate) on a connection of its own.

use async_trait::async_trait;
use ferry_api::{Backlog, ConnectorError, Lag, Positions, Source, SourceContext};

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
