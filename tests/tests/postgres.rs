//! file → PostgreSQL against the real server (PG_URL, default
//! postgres://root@127.0.0.1:5432/test; `scripts/services` starts it). No
//! server is a failure, not a skip.

use std::fs;
use std::process::Command;
use std::time::Duration;

use ferry_tests::*;

fn pg_url() -> String {
    std::env::var("PG_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_string())
}

/// Runs SQL through psql and returns its unaligned output.
fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .arg(pg_url())
        .args(["-qtAX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql must be installed (scripts/services installs PostgreSQL)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn crash_test(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_t_{mode}_{}", fastrand::u32(..));
    let key = if mode == "upsert" {
        ", PRIMARY KEY (file, seq)"
    } else {
        ""
    };
    psql(&format!(
        "CREATE TABLE {table} (file text NOT NULL, seq bigint NOT NULL, pad text{key})"
    ));
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 100_000);
    write_test_input(&d.join("in/b.jsonl"), "b", 100_000);
    let key_line = if mode == "upsert" {
        "  key: [file, seq]\n"
    } else {
        ""
    };
    fs::write(
        d.join("pg.yaml"),
        format!(
            "name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {table}\n  mode: {mode}\n{key_line}delivery:\n  batch_size: 2000\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
    let count = || {
        psql(&format!("SELECT count(*) FROM {table}"))
            .parse::<u64>()
            .unwrap()
    };

    let mut interrupted = 0;
    for kill in 0..8 {
        run_then_kill9(d, "pg.yaml", &[("PG_URL", &pg_url())], 30..350);
        let n = count();
        if n < 200_000 {
            interrupted += 1;
        }
        eprintln!("{mode} kill {kill}: {n} rows committed");
    }
    assert!(
        interrupted >= 4,
        "only {interrupted} of 8 kills landed mid-run"
    );
    let mut f = Ferry::start_with_env(d, &["run", "--once", "pg.yaml"], &[("PG_URL", &pg_url())]);
    let status = f.wait_for_exit(Duration::from_secs(180)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());

    let summary = psql(&format!(
        "SELECT string_agg(file || ':' || n || ':' || d || ':' || lo || ':' || hi, ',' ORDER BY file) FROM \
         (SELECT file, count(*) n, count(DISTINCT seq) d, min(seq) lo, max(seq) hi FROM {table} GROUP BY file) s"
    ));
    assert_eq!(
        summary, "a:100000:100000:0:99999,b:100000:100000:0:99999",
        "rows: file:count:distinct:min:max"
    );
    psql(&format!(
        "DROP TABLE {table}; DELETE FROM ferry_offsets WHERE pipeline = '{table}'"
    ));
}

/// No key at all: only the positions committed in the same transaction as
/// the rows keep a replay from inserting them twice.
#[test]
fn file_to_postgres_insert_exactly_once_across_sigkill() {
    crash_test("insert");
}

#[test]
fn file_to_postgres_upsert_exactly_once_across_sigkill() {
    crash_test("upsert");
}

#[test]
fn a_missing_table_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 10);
    fs::write(
        d.join("pg.yaml"),
        "name: missing\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: ${PG_URL}\n  table: no_such_table_here\n",
    )
    .unwrap();
    let mut f = Ferry::start_with_env(d, &["run", "--once", "pg.yaml"], &[("PG_URL", &pg_url())]);
    let status = f.wait_for_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", f.log_text());
    assert!(
        f.log_text()
            .contains("table no_such_table_here does not exist"),
        "{}",
        f.log_text()
    );
}

/// Rows the database refuses: a string in a bigint column (refused by COPY)
/// and a null in a NOT NULL column (refused by the INSERT).
fn bad_rows_setup(d: &std::path::Path, name: &str, tolerance: &str) -> String {
    let table = format!("ferry_bad_{name}_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (file text NOT NULL, seq bigint NOT NULL, pad text)"
    ));
    fs::create_dir_all(d.join("in")).unwrap();
    let mut text = String::new();
    for seq in 0..3_000u64 {
        match seq {
            700 => text.push_str("{\"file\":\"a\",\"seq\":\"seven hundred\",\"pad\":\"x\"}\n"),
            2_100 => text.push_str("{\"file\":null,\"seq\":2100,\"pad\":\"x\"}\n"),
            _ => text.push_str(&test_line("a", seq, 80)),
        }
    }
    fs::write(d.join("in/a.jsonl"), text).unwrap();
    let dlq = if tolerance == "all" {
        "  dead_letter: dlq.jsonl\n"
    } else {
        ""
    };
    fs::write(
        d.join("pg.yaml"),
        format!(
            "name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {table}\nerrors:\n  tolerance: {tolerance}\n{dlq}"
        ),
    )
    .unwrap();
    table
}

#[test]
fn refused_rows_are_dead_lettered_with_the_database_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = bad_rows_setup(d, "all", "all");
    let mut f = Ferry::start_with_env(d, &["run", "--once", "pg.yaml"], &[("PG_URL", &pg_url())]);
    let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT seq) FROM {table}"
        )),
        "2998|2998"
    );
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM {table} WHERE seq IN (700, 2100)"
        )),
        "0"
    );
    let dlq = read_jsonl(&d.join("dlq.jsonl"));
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert_eq!(dlq[0]["stage"], "sink");
    assert_eq!(dlq[0]["record"]["seq"], "seven hundred");
    assert!(
        dlq[0]["error"]
            .as_str()
            .unwrap()
            .contains("invalid input syntax for type bigint"),
        "{dlq:?}"
    );
    assert_eq!(dlq[1]["record"]["seq"], 2100);
    assert!(
        dlq[1]["error"]
            .as_str()
            .unwrap()
            .contains("null value in column \"file\""),
        "{dlq:?}"
    );
    assert!(
        dlq[1]["position"]["offset"].as_u64().unwrap()
            > dlq[0]["position"]["offset"].as_u64().unwrap()
    );
    psql(&format!(
        "DROP TABLE {table}; DELETE FROM ferry_offsets WHERE pipeline = '{table}'"
    ));
}

#[test]
fn a_refused_row_with_tolerance_none_stops_the_pipeline_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = bad_rows_setup(d, "none", "none");
    let mut f = Ferry::start_with_env(d, &["run", "--once", "pg.yaml"], &[("PG_URL", &pg_url())]);
    let status = f.wait_for_exit(Duration::from_secs(60)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", f.log_text());
    let log = f.log_text();
    assert!(log.contains("bad record at in/a.jsonl@"), "{log}");
    assert!(
        log.contains("invalid input syntax for type bigint"),
        "{log}"
    );
    // Nothing from the refused row on was committed.
    assert_eq!(
        psql(&format!("SELECT count(*) FROM {table} WHERE seq >= 700")),
        "0"
    );
    psql(&format!(
        "DROP TABLE {table}; DELETE FROM ferry_offsets WHERE pipeline = '{table}'"
    ));
}
