//! The statements the PostgreSQL source runs, built once on open from the
//! relation's columns and the cursor: pure text, so they are tested without
//! a server.

use crate::sql::quote;

/// The source's three statements.
#[derive(Debug, Default)]
pub(super) struct Statements {
    /// Rows up to the safe upper bound, from the beginning: `$1..$n` the
    /// bound, `$n+1` the limit.
    pub read_first: String,
    /// Rows after the cursor up to the safe upper bound: `$1..$n` the
    /// cursor, `$n+1..$2n` the bound, `$2n+1` the limit.
    pub read_next: String,
    /// The snapshot's xmin and xmax, the largest cursor visible, and the
    /// virtual transactions writing to the watched tables.
    pub refresh: String,
    /// How many rows there are (at most [`LAG_CAP`]): the lag from the start.
    pub lag_first: String,
    /// How many rows are after the cursor `$1..$n` (at most [`LAG_CAP`]).
    pub lag_next: String,
}

/// The most rows a lag measurement counts: past it the lag is "at least
/// this many" (an estimate), so that a huge backlog costs a bounded scan.
pub(super) const LAG_CAP: i64 = 1_000_000;

/// A relation's column: its name and its type as `format_type` gives it.
pub(super) type Column = (String, String);

impl Statements {
    /// The statements for `relation` (quoted) read in the order of `cursor`,
    /// fenced on writers to the `watched` tables (oids). Err names a cursor
    /// column that is not among `columns`.
    pub fn build(
        relation: &str,
        columns: &[Column],
        cursor: &[String],
        watched: &[i64],
    ) -> Result<Statements, String> {
        let mut cursor_types = Vec::new();
        for c in cursor {
            match columns.iter().find(|(name, _)| name == c) {
                Some((_, ty)) => cursor_types.push(ty.clone()),
                None => return Err(c.clone()),
            }
        }
        let params = |from: usize| {
            let p: Vec<String> = cursor_types
                .iter()
                .enumerate()
                .map(|(i, ty)| format!("${}::{ty}", from + i))
                .collect();
            format!("({})", p.join(", "))
        };
        let quoted: Vec<String> = cursor.iter().map(|c| format!("s.{}", quote(c))).collect();
        let tuple = format!("({})", quoted.join(", "));
        let n = cursor.len();
        let texts = quoted
            .iter()
            .map(|c| format!("{c}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        // A row whose cursor is NULL has no place in the order: it is never
        // read (as the refresh never counts it); the README says so.
        let present = quoted
            .iter()
            .map(|c| format!("{c} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let order = quoted.join(", ");
        let select = format!(
            "SELECT row_to_json(x)::text, {texts} FROM {relation} s, LATERAL (SELECT {}) x",
            json_columns(columns).join(", ")
        );
        let desc = quoted
            .iter()
            .map(|c| format!("{c} DESC"))
            .collect::<Vec<_>>()
            .join(", ");
        let oids = watched
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Ok(Statements {
            read_first: format!(
                "{select} WHERE {present} AND {tuple} <= {} ORDER BY {order} LIMIT ${}",
                params(1),
                n + 1
            ),
            read_next: format!(
                "{select} WHERE {present} AND {tuple} > {} AND {tuple} <= {} ORDER BY {order} LIMIT ${}",
                params(1),
                params(n + 1),
                2 * n + 1
            ),
            lag_first: format!(
                "SELECT count(*) FROM (SELECT 1 FROM {relation} s WHERE {present} LIMIT {LAG_CAP}) c"
            ),
            lag_next: format!(
                "SELECT count(*) FROM (SELECT 1 FROM {relation} s WHERE {present} AND {tuple} > {} LIMIT {LAG_CAP}) c",
                params(1)
            ),
            refresh: format!(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, pg_snapshot_xmax(pg_current_snapshot())::text, \
                 (SELECT ARRAY[{texts}] FROM {relation} s WHERE {present} ORDER BY {desc} LIMIT 1), \
                 (SELECT array_agg(DISTINCT virtualtransaction) FROM pg_locks WHERE locktype = 'relation' \
                  AND mode = 'RowExclusiveLock' AND relation = ANY('{{{oids}}}'::oid[]) AND pid <> pg_backend_pid())"
            ),
        })
    }
}

/// Columns as JSON: most types map through row_to_json (numbers, text,
/// bool, json as nested values, NULL as null); bytea as base64, and
/// timestamps without time zone read as UTC.
fn json_columns(columns: &[Column]) -> Vec<String> {
    columns
        .iter()
        .map(|(name, ty)| {
            let c = format!("s.{}", quote(name));
            match ty.as_str() {
                "bytea" => format!("encode({c}, 'base64') AS {}", quote(name)),
                t if t.starts_with("timestamp") && t.ends_with("without time zone") => {
                    format!("{c} AT TIME ZONE 'UTC' AS {}", quote(name))
                }
                _ => c,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<Column> {
        vec![
            ("id".into(), "bigint".into()),
            ("at".into(), "timestamp without time zone".into()),
            ("blob".into(), "bytea".into()),
        ]
    }

    #[test]
    fn a_two_column_cursor_binds_its_values_by_type_then_the_limit() {
        let s = Statements::build("t", &columns(), &["at".into(), "id".into()], &[7]).unwrap();
        assert!(
            s.read_first
                .contains(r#"(s."at", s."id") <= ($1::timestamp without time zone, $2::bigint)"#),
            "{}",
            s.read_first
        );
        assert!(s.read_first.ends_with("LIMIT $3"));
        assert!(
            s.read_next
                .contains(r#"> ($1::timestamp without time zone, $2::bigint) AND"#),
            "{}",
            s.read_next
        );
        assert!(s.read_next.ends_with("LIMIT $5"));
        assert!(s.refresh.contains("ANY('{7}'::oid[])"), "{}", s.refresh);
    }

    #[test]
    fn bytea_and_naive_timestamps_are_converted_for_json() {
        let s = Statements::build("t", &columns(), &["id".into()], &[]).unwrap();
        assert!(
            s.read_first
                .contains(r#"encode(s."blob", 'base64') AS "blob""#)
        );
        assert!(
            s.read_first
                .contains(r#"s."at" AT TIME ZONE 'UTC' AS "at""#)
        );
    }

    #[test]
    fn a_cursor_column_missing_from_the_relation_is_named() {
        let e = Statements::build("t", &columns(), &["nope".into()], &[]).unwrap_err();
        assert_eq!(e, "nope");
    }
}
