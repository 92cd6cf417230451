//! # ferry-connector-kit — helpers connectors share
//!
//! What several connectors (and the runtime) need that is not part of the
//! connector contract ([`ferry_api`]): a connector may use any of it or
//! none.
//!
//! * [`IdSpec`] — the `id:` setting of a sink that writes documents.
//! * [`Destination`] — a sink's `table:` / `collection:`: one name, a
//!   field, or where a `route` transform sent the record.
//! * [`redact_url`] — a connection URL without its passwords.
//! * [`fs`] — durable file writes: replace a file atomically, fsync a folder.
//! * [`json_kind`] — what kind of JSON value a value is, for messages.

mod destination;
pub mod fs;
mod ids;
mod url;

pub use destination::{Destination, name_in};
pub use ids::{IdName, IdSpec};
pub use url::redact_url;

/// What kind of JSON value `v` is (`a string`, `an object`), for messages.
pub fn json_kind(v: &ferry_api::Value) -> &'static str {
    use ferry_api::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
