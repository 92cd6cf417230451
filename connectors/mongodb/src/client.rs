//! What the sink and the source share: connecting, and telling retriable
//! errors from the others.

use std::time::Duration;

use ferry_api::ConnectorError;
use mongodb::Client;
use mongodb::bson::doc;
use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;

/// A client for `uri`; `shown` is the URI without its password, the only
/// form that reaches messages.
pub(crate) async fn connect(uri: &str, shown: &str) -> Result<Client, ConnectorError> {
    let mut options = ClientOptions::parse(uri).await.map_err(|e| {
        ConnectorError::Fatal(format!("bad MongoDB connection string {shown}: {e}"))
    })?;
    options.app_name.get_or_insert_with(|| "ferry".to_string());
    // Fail a connection attempt within seconds (the driver's default is
    // 30 s): the runtime retries with its own backoff and says so.
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    Client::with_options(options)
        .map_err(|e| ConnectorError::Fatal(format!("MongoDB client for {shown}: {e}")))
}

pub(crate) async fn ping(client: &Client, shown: &str) -> Result<(), ConnectorError> {
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map(|_| ())
        .map_err(|e| classify(&format!("reaching MongoDB at {shown}"), e))
}

/// Connection trouble and the server stepping down or shutting down are
/// worth retrying; anything else (authentication, a bad command) is not.
pub(crate) fn classify(what: &str, e: mongodb::error::Error) -> ConnectorError {
    let retriable = match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::Shutdown => true,
        // NotWritablePrimary, InterruptedAtShutdown, ShutdownInProgress,
        // NetworkTimeout, HostUnreachable, HostNotFound, ExceededTimeLimit,
        // PrimarySteppedDown, WriteConcernFailed…
        ErrorKind::Command(c) => matches!(
            c.code,
            6 | 7 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436 | 64
        ),
        _ => false,
    } || e.contains_label("RetryableWriteError");
    let message = format!("{what}: {e}");
    if retriable {
        ConnectorError::Retriable(message)
    } else {
        ConnectorError::Fatal(message)
    }
}

/// Ends the client's background work (monitors, connection pools) before
/// the client goes away. Waits for what the handles dropped before it left
/// behind (a change stream's `killCursors`): shut down at once instead, the
/// pool is gone under that request, which panics inside the driver
/// (`connection_requester.rs`). Bounded: a server that does not answer does
/// not hold up a stop.
pub(crate) async fn shut_down(client: Client) {
    let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
}
