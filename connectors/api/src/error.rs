use std::io;

/// A connector's failure, classified so the runtime can decide what to do.
///
/// Retriable errors (a lost connection, a timeout, a full disk) are retried by
/// the runtime with backoff; anything else stops the pipeline with the
/// message. Messages must never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// An I/O error, with what was being done when it happened.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A transient failure: the same call may succeed later.
    #[error("{0}")]
    Retriable(String),
    /// A failure that retrying will not fix.
    #[error("{0}")]
    Fatal(String),
}

impl ConnectorError {
    /// Wraps an I/O error with what was being done, e.g. `"reading /data/a.jsonl"`.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        ConnectorError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the runtime should try the same call again after a backoff.
    pub fn is_retriable(&self) -> bool {
        match self {
            ConnectorError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::StorageFull
                    | io::ErrorKind::QuotaExceeded
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::BrokenPipe
            ),
            ConnectorError::Retriable(_) => true,
            ConnectorError::Fatal(_) => false,
        }
    }
}
