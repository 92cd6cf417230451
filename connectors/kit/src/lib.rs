//! # ferry-connector-kit — helpers connectors share
//!
//! What several connectors (and the runtime) need that is not part of the
//! connector contract ([`ferry_api`]): a connector may use any of it or
//! none.
//!
//! * [`IdSpec`] — the `id:` setting of a sink that writes documents.
//! * [`redact_url`] — a connection URL without its passwords.
//! * [`fs`] — durable file writes: replace a file atomically, fsync a folder.

pub mod fs;
mod ids;
mod url;

pub use ids::{IdName, IdSpec};
pub use url::redact_url;
