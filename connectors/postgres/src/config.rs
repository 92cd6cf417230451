use async_trait::async_trait;
use ferry_api::{BuildContext, ConfigProblem, ConnectorError, Delivery, Sink, SinkConfig};
use serde::Deserialize;

use crate::sink::PostgresSink;

/// How records land in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plain inserts.
    #[default]
    Insert,
    /// `INSERT … ON CONFLICT (key) DO UPDATE`: the last record of a key wins.
    Upsert,
}

/// `sink: {type: postgres, ...}`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// `postgres://user:password@host:port/database`; use `${PG_URL}` to keep
    /// the password out of the file.
    pub url: String,
    /// `schema.table` or `table` (schema `public`). Must exist.
    pub table: String,
    /// `insert` (default) or `upsert`.
    #[serde(default)]
    pub mode: Mode,
    /// The conflict target for `upsert`: columns of a unique index.
    #[serde(default)]
    pub key: Vec<String>,
    /// Where the pipeline's source positions are committed, in the same
    /// transaction as the rows. Created when missing.
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
}

fn default_offsets_table() -> String {
    "public.ferry_offsets".to_string()
}

/// `schema.table` → (schema, table), both validated as plain identifiers.
pub(crate) fn split_table(name: &str) -> Option<(String, String)> {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    (is_identifier(schema) && is_identifier(table)).then(|| (schema.to_string(), table.to_string()))
}

/// Plain identifiers only: they are quoted into SQL.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// The URL without its password, for logs and `validate`.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[async_trait]
impl SinkConfig for PostgresSinkConfig {
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if !self.url.starts_with("postgres://") && !self.url.starts_with("postgresql://") {
            problems.push(ConfigProblem::at(
                "url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if split_table(&self.table).is_none() {
            problems.push(ConfigProblem::at(
                "table",
                "must be `table` or `schema.table` (letters, digits, _)",
            ));
        }
        if split_table(&self.offsets_table).is_none() {
            problems.push(ConfigProblem::at(
                "offsets_table",
                "must be `table` or `schema.table` (letters, digits, _)",
            ));
        }
        match self.mode {
            Mode::Upsert if self.key.is_empty() => problems.push(ConfigProblem::at(
                "key",
                "is required with mode: upsert (the conflict target)",
            )),
            Mode::Insert if !self.key.is_empty() => {
                problems.push(ConfigProblem::at("key", "is only used with mode: upsert"))
            }
            _ => {}
        }
        for k in &self.key {
            if !is_identifier(k) {
                problems.push(ConfigProblem::at(
                    "key",
                    format!("`{k}` is not a plain column name"),
                ));
            }
        }
        problems
    }

    fn describe(&self) -> String {
        let mode = match self.mode {
            Mode::Insert => "insert".to_string(),
            Mode::Upsert => format!("upsert on {}", self.key.join(", ")),
        };
        format!(
            "postgres {} table {} ({mode})",
            redacted(&self.url),
            self.table
        )
    }

    fn delivery(&self) -> Delivery {
        Delivery::Transactional
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(PostgresSink::new(
            self.clone(),
            ctx.pipeline.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redacted("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn tables_are_plain_identifiers() {
        assert_eq!(
            split_table("orders"),
            Some(("public".into(), "orders".into()))
        );
        assert_eq!(split_table("s.t_1"), Some(("s".into(), "t_1".into())));
        assert_eq!(split_table("x; drop table y"), None);
    }
}
