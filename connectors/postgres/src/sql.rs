//! What the PostgreSQL source and sink share: how a database error is
//! classified, and how an identifier is quoted.

use ferry_api::ConnectorError;

/// Maps a database error to retriable (connection trouble, server shutting
/// down, serialization failure) or fatal, with what was being done.
pub(crate) fn db_error(context: &str, e: sqlx::Error) -> ConnectorError {
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
                // lock_timeout (the sink's safety net against a wait on
                // its own other transaction).
                || c == "55P03"
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
pub(crate) fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
}

/// A row whose key the target already holds (or any unique index): for
/// a direct upsert stream, the sign to go through the staging table.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// The database's own words for a refused row.
pub(crate) fn refusal(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// `"name"`, with inner quotes doubled.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}
