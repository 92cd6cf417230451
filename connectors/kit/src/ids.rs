//! Document ids for sinks that write documents (MongoDB, Elasticsearch).

/// Where a sink that writes documents takes each document's id from
/// (`id:` in a MongoDB or Elasticsearch sink).
#[derive(Debug, Clone, serde::Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(
    untagged,
    expecting = "expected `position`, `none`, or `{field: name}`"
)]
pub enum IdSpec {
    /// `position` (the default: [`ferry_api::Position::id`], so a replay
    /// writes the same ids) or `none` (the server chooses: at-least-once).
    Named(IdName),
    /// `{field: name}`: the value of a record field.
    Field {
        /// The record field whose value is the id.
        field: String,
    },
}

#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum IdName {
    Position,
    None,
}

impl Default for IdSpec {
    fn default() -> Self {
        IdSpec::Named(IdName::Position)
    }
}
