//! file → PostgreSQL against the real server (PG_URL, default
//! postgres://root@127.0.0.1:5432/test; `scripts/services` starts it). No
//! server is a failure, not a skip.

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use ferry_tests::*;

/// Runs SQL against the test server.
fn psql(sql: &str) -> String {
    psql_at(&pg_url(), sql)
}

/// Drops a test's tables and the positions its pipelines committed.
fn drop_tables(tables: &[&str], pipelines: &[&str]) {
    let pipelines: Vec<String> = pipelines.iter().map(|p| format!("'{p}'")).collect();
    psql(&format!(
        "DROP TABLE {}; DELETE FROM ferry_offsets WHERE pipeline IN ({})",
        tables.join(", "),
        pipelines.join(", ")
    ));
}

/// A PG_URL whose connections carry `application_name`: the second value,
/// by which a test finds exactly them to terminate.
fn tagged_url(table: &str) -> (String, String) {
    let app = format!("ferry_{table}");
    (format!("{}?application_name={app}", pg_url()), app)
}

/// Terminates every connection of `app` (pg_terminate_backend); returns
/// how many there were.
fn terminate(app: &str) -> u32 {
    psql(&format!(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}') t"
    ))
    .parse()
    .unwrap()
}

/// Starts ferry in `d` with PG_URL set to the test server.
fn start(d: &std::path::Path, args: &[&str]) -> Ferry {
    Ferry::start_with_env(d, args, &[("PG_URL", &pg_url())])
}

/// Runs `--once` and returns the log; fails on a non-zero exit.
fn run_once(d: &std::path::Path, config: &str) -> String {
    let mut f = start(d, &["run", "--once", config]);
    let status = f.wait_for_exit(Duration::from_secs(180)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());
    f.log_text()
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
        kill9_mid_run(
            d,
            "pg.yaml",
            &[("PG_URL", &pg_url())],
            count,
            200_000,
            (kill, 8),
        );
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
    run_once(d, "pg.yaml");

    let summary = psql(&format!(
        "SELECT string_agg(file || ':' || n || ':' || d || ':' || lo || ':' || hi, ',' ORDER BY file) FROM \
         (SELECT file, count(*) n, count(DISTINCT seq) d, min(seq) lo, max(seq) hi FROM {table} GROUP BY file) s"
    ));
    assert_eq!(
        summary, "a:100000:100000:0:99999,b:100000:100000:0:99999",
        "rows: file:count:distinct:min:max"
    );
    drop_tables(&[&table], &[&table]);
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

/// Upserts COPY straight into the table while no key exists yet and go
/// through the staging table once one does: rows that update existing
/// keys, keys repeated within a batch and across batches, and runs of new
/// keys after updates (direct again) all end as the last record of each
/// key, once.
#[test]
fn upserts_update_existing_keys_whichever_way_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_upd_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (k bigint PRIMARY KEY, v text NOT NULL, n bigint); \
         INSERT INTO {table} SELECT g, 'old', 0 FROM generate_series(0, 999) g"
    ));
    fs::create_dir_all(d.join("in")).unwrap();
    let mut text = String::new();
    let mut expect = std::collections::BTreeMap::new();
    let mut line = 0u64;
    let mut put = |k: u64, text: &mut String| {
        line += 1;
        text.push_str(&format!("{{\"k\":{k},\"v\":\"v{line}\",\"n\":{line}}}\n"));
        expect.insert(k, line);
    };
    // Updates of existing keys, then new keys (several batches: direct
    // streams again after the staged ones), then a batch repeating keys
    // within itself, then updates of the new keys.
    for k in 0..1500 {
        put(k, &mut text);
    }
    for k in 1500..20_000 {
        put(k, &mut text);
    }
    for k in 0..3000 {
        put(20_000 + k % 700, &mut text);
    }
    for k in (5000..9000).rev() {
        put(k, &mut text);
    }
    fs::write(d.join("in/a.jsonl"), text).unwrap();
    fs::write(
        d.join("pg.yaml"),
        format!(
            "name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {table}\n  mode: upsert\n  key: [k]\ndelivery:\n  batch_size: 1000\n"
        ),
    )
    .unwrap();
    run_once(d, "pg.yaml");
    let got = psql(&format!(
        "SELECT string_agg(k || ':' || n, ',' ORDER BY k) FROM {table} WHERE v = 'v' || n"
    ));
    let want: Vec<String> = expect.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    assert_eq!(psql(&format!("SELECT count(*) FROM {table}")), "20700");
    assert!(
        got == want.join(","),
        "rows differ from the last record of each key"
    );
    drop_tables(&[&table], &[&table]);
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
    let mut f = start(d, &["run", "--once", "pg.yaml"]);
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
    run_once(d, "pg.yaml");
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
    drop_tables(&[&table], &[&table]);
}

#[test]
fn a_refused_row_with_tolerance_none_stops_the_pipeline_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = bad_rows_setup(d, "none", "none");
    let mut f = start(d, &["run", "--once", "pg.yaml"]);
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
    drop_tables(&[&table], &[&table]);
}

fn source_config(d: &std::path::Path, name: &str, source: &str) {
    fs::write(
        d.join("src.yaml"),
        format!(
            "name: {name}\nsource:\n  type: postgres\n  url: ${{PG_URL}}\n{source}  poll_interval: 100ms\nsink:\n  type: file\n  path: out.jsonl\ndelivery:\n  batch_size: 500\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
}

/// A writer that keeps a psql session open and runs transactions of 1–5
/// rows that sleep before committing, so that with several writers commits
/// land out of id order; one transaction in ten rolls back.
fn concurrent_writer(table: String, writer: u32, transactions: u32) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut child = Command::new("psql")
            .arg(pg_url())
            .args(["-qtAX", "-v", "ON_ERROR_STOP=1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        let mut stdin = child.stdin.take().unwrap();
        let mut n = 0;
        for t in 0..transactions {
            let rows = fastrand::u32(1..=5);
            let end = if t % 10 == 3 { "ROLLBACK" } else { "COMMIT" };
            writeln!(
                stdin,
                "BEGIN; INSERT INTO {table} (writer, n) SELECT {writer}, g FROM generate_series({n}, {}) g; \
                 SELECT pg_sleep({}); {end};",
                n + rows - 1,
                fastrand::u32(0..25) as f64 / 1000.0
            )
            .unwrap();
            n += rows;
        }
        drop(stdin);
        assert!(child.wait().unwrap().success(), "writer {writer} failed");
    })
}

/// Rows from transactions that commit out of id order, read while ferry is
/// SIGKILLed: each committed row arrives exactly once.
#[test]
fn postgres_to_file_exactly_once_with_out_of_order_commits_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_src_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, writer int NOT NULL, n int NOT NULL)"
    ));
    source_config(
        d,
        &table,
        &format!("  table: {table}\n  incrementing_column: id\n  batch_size: 200\n"),
    );
    let writers: Vec<_> = (0..4)
        .map(|w| concurrent_writer(table.clone(), w, 300))
        .collect();
    for _ in 0..6 {
        run_then_kill9(d, "src.yaml", &[("PG_URL", &pg_url())], 200..1200);
    }
    for w in writers {
        w.join().unwrap();
    }
    run_once(d, "src.yaml");

    let committed: Vec<u64> = psql(&format!("SELECT id FROM {table} ORDER BY id"))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(committed.len() > 1000, "{} rows", committed.len());
    let out = read_jsonl(&d.join("out.jsonl"));
    let ids: Vec<u64> = out.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    let before = sorted.len();
    sorted.dedup();
    assert_eq!(before - sorted.len(), 0, "duplicated rows");
    let lost: Vec<&u64> = committed
        .iter()
        .filter(|id| sorted.binary_search(id).is_err())
        .collect();
    assert!(
        lost.is_empty(),
        "{} rows lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(sorted, committed);
    // Read in cursor order.
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "rows out of id order");
    psql(&format!("DROP TABLE {table}"));
}

/// Column types map to JSON sensibly; NULL stays null.
#[test]
fn postgres_source_maps_column_types() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_types_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, name text, amount numeric(10,2), ratio float8, ok bool, \
         at timestamptz, naive timestamp, day date, doc jsonb, tags text[], blob bytea);
         INSERT INTO {table} VALUES
           (1, 'a\tb \"c\"', 12.50, 0.25, true, '2024-05-01 12:00:00+02', '2024-05-01 10:00:00.123456', '2024-05-01',
            '{{\"k\": [1, {{\"n\": null}}]}}', ARRAY['x','y'], '\\x00ff10'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    ));
    source_config(
        d,
        &table,
        &format!("  query: SELECT * FROM {table} WHERE id > 0\n  incrementing_column: id\n"),
    );
    run_once(d, "src.yaml");
    let out = read_jsonl(&d.join("out.jsonl"));
    assert_eq!(
        out[0],
        serde_json::json!({
            // numeric(…, 2) arrives as PostgreSQL wrote it: exactly 12.50.
            "id": 1, "name": "a\tb \"c\"", "amount": serde_json::from_str::<serde_json::Value>("12.50").unwrap(), "ratio": 0.25, "ok": true,
            "at": "2024-05-01T10:00:00+00:00", "naive": "2024-05-01T10:00:00.123456+00:00",
            "day": "2024-05-01", "doc": {"k": [1, {"n": null}]}, "tags": ["x", "y"], "blob": "AP8Q"
        })
    );
    assert_eq!(
        out[1],
        serde_json::json!({
            "id": 2, "name": null, "amount": null, "ratio": null, "ok": null, "at": null,
            "naive": null, "day": null, "doc": null, "tags": null, "blob": null
        })
    );
    assert_eq!(out.len(), 2);
    psql(&format!("DROP TABLE {table}"));
}

/// `(updated_at, id)` compared as a tuple: rows sharing a timestamp across a
/// batch boundary and a restart are neither skipped nor repeated; an update
/// that moves the timestamp forward is read again.
#[test]
fn timestamp_cursor_never_skips_rows_sharing_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_ts_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL);
         INSERT INTO {table} SELECT g, 'first', '2024-01-01 00:00:00+00' FROM generate_series(1, 10) g"
    ));
    source_config(
        d,
        &table,
        &format!(
            "  table: {table}\n  mode: timestamp+incrementing\n  timestamp_column: updated_at\n  incrementing_column: id\n  batch_size: 3\n"
        ),
    );
    run_once(d, "src.yaml");
    assert_eq!(read_jsonl(&d.join("out.jsonl")).len(), 10);
    // Same timestamp, ids after the cursor; and one row updated forward.
    psql(&format!(
        "INSERT INTO {table} SELECT g, 'late', '2024-01-01 00:00:00+00' FROM generate_series(11, 13) g;
         UPDATE {table} SET v = 'updated', updated_at = '2024-01-02 00:00:00+00' WHERE id = 4"
    ));
    run_once(d, "src.yaml");
    let out = read_jsonl(&d.join("out.jsonl"));
    let seen: Vec<(i64, String)> = out
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["v"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected: Vec<(i64, String)> = (1..=10).map(|i| (i, "first".to_string())).collect();
    expected.extend((11..=13).map(|i| (i, "late".to_string())));
    expected.push((4, "updated".to_string()));
    assert_eq!(seen, expected);
    psql(&format!("DROP TABLE {table}"));
}

/// Both directions at once in one daemon — file → table and table → file —
/// while every connection of theirs is killed with pg_terminate_backend
/// over and over: both recover by themselves, nothing lost or repeated.
#[test]
fn connections_terminated_mid_run_recover_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_term_{}", fastrand::u32(..));
    let (url, app) = tagged_url(&table);
    psql(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, file text NOT NULL, seq bigint NOT NULL, pad text)"
    ));
    fs::create_dir_all(d.join("in")).unwrap();
    fs::create_dir_all(d.join("pipes")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 100_000);
    fs::write(
        d.join("pipes/load.yaml"),
        format!(
            "name: {table}_load\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {table}\ndelivery:\n  batch_size: 2000\n  flush_interval: 100ms\nerrors:\n  retry_backoff: 50ms\n  retry_backoff_max: 500ms\n"
        ),
    )
    .unwrap();
    fs::write(
        d.join("pipes/unload.yaml"),
        format!(
            "name: {table}_unload\nsource:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {table}\n  incrementing_column: id\n  poll_interval: 100ms\nsink:\n  type: file\n  path: out.jsonl\ndelivery:\n  batch_size: 2000\n  flush_interval: 100ms\nerrors:\n  retry_backoff: 50ms\n  retry_backoff_max: 500ms\n"
        ),
    )
    .unwrap();
    let mut f = Ferry::start_with_env(
        d,
        &["run", "--progress-interval", "1s", "pipes"],
        &[("PG_URL", &url)],
    );
    let mut terminated = 0;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(fastrand::u64(100..400)));
        terminated += terminate(&app);
    }
    let done = wait_until(Duration::from_secs(120), || {
        count_lines(&d.join("out.jsonl")) >= 100_000
    });
    assert!(done, "{}", f.log_text());
    f.signal(libc::SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{}", f.log_text());
    let log = f.log_text();
    assert!(terminated >= 6, "only {terminated} connections terminated");
    assert!(
        log.contains("starting again from the committed positions"),
        "{log}"
    );

    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM {table}"
        )),
        "100000|100000|0|99999"
    );
    let out = read_jsonl(&d.join("out.jsonl"));
    let mut seqs: Vec<u64> = out.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), 100_000);
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 100_000, "duplicates in out.jsonl");
    drop_tables(&[&table], &[&format!("{table}_load")]);
}

/// `create_table: true` builds the table from the first records (types
/// inferred, key as primary key); `columns:` maps fields to other names and
/// leaves unmapped fields out.
#[test]
fn create_table_and_column_map() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mapped = format!("ferry_new_map_{}", fastrand::u32(..));
    let auto = format!("ferry_new_auto_{}", fastrand::u32(..));
    fs::create_dir_all(d.join("in")).unwrap();
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!(
            "{{\"order_id\":{},\"customer\":\"c{i}\",\"amount\":{}.5,\"paid\":{},\"items\":[{{\"sku\":\"s{i}\"}}],\"note\":null,\"secret\":\"x\"}}\n",
            i % 2000,
            i,
            i % 2 == 0
        ));
    }
    fs::write(d.join("in/orders.jsonl"), text).unwrap();
    let url = pg_url();
    fs::write(
        d.join("map.yaml"),
        format!(
            "name: {mapped}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: {url}\n  table: {mapped}\n  mode: upsert\n  key: [order_id]\n  create_table: true\n  columns:\n    order_id: order_id\n    customer: customer_name\n    amount: amount\n    items: items\n"
        ),
    )
    .unwrap();
    fs::write(
        d.join("auto.yaml"),
        format!(
            "name: {auto}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: {url}\n  table: {auto}\n  create_table: true\n"
        ),
    )
    .unwrap();
    run_once(d, "map.yaml");
    run_once(d, "auto.yaml");
    let columns = |t: &str| {
        psql(&format!(
            "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) \
             FROM information_schema.columns WHERE table_name = '{t}'"
        ))
    };
    assert_eq!(
        columns(&mapped),
        "amount double precision, customer_name text, items jsonb, order_id bigint"
    );
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM information_schema.table_constraints WHERE table_name = '{mapped}' AND constraint_type = 'PRIMARY KEY'"
        )),
        "1"
    );
    // 3000 records over 2000 keys: the last record of each key won.
    assert_eq!(
        psql(&format!(
            "SELECT count(*), max(amount), (SELECT customer_name FROM {mapped} WHERE order_id = 5), \
             (SELECT items->0->>'sku' FROM {mapped} WHERE order_id = 5) FROM {mapped}"
        )),
        "2000|2999.5|c2005|s2005"
    );
    assert_eq!(
        columns(&auto),
        "amount double precision, customer text, items jsonb, note text, order_id bigint, paid boolean, secret text"
    );
    assert_eq!(psql(&format!("SELECT count(*) FROM {auto}")), "3000");
    drop_tables(&[&mapped, &auto], &[&mapped, &auto]);
}

/// `validate --check-connections` names every unreachable server, missing
/// table and missing column, by file and pipeline; plain `validate` does no
/// I/O and passes.
#[test]
fn validate_checks_connections_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_check_{}", fastrand::u32(..));
    psql(&format!("CREATE TABLE {table} (id int, v text)"));
    let url = pg_url();
    let write = |file: &str, source: String, sink: String| {
        fs::write(
            d.join(file),
            format!(
                "name: {}\nsource:\n{source}sink:\n{sink}",
                file.trim_end_matches(".yaml")
            ),
        )
        .unwrap();
    };
    let file_source = "  type: file\n  path: in/*.jsonl\n".to_string();
    // Each its own output: two pipelines writing one file are refused.
    let file_sink = |out: &str| format!("  type: file\n  path: {out}\n");
    let pg_sink = |t: &str| format!("  type: postgres\n  url: {url}\n  table: {t}\n");
    let pg_source = |u: &str, col: &str| {
        format!("  type: postgres\n  url: {u}\n  table: {table}\n  incrementing_column: {col}\n")
    };
    write("good.yaml", file_source.clone(), pg_sink(&table));
    write(
        "missing.yaml",
        file_source.clone(),
        pg_sink("no_such_table_here"),
    );
    write(
        "down.yaml",
        pg_source("postgres://root@127.0.0.1:9/test", "id"),
        file_sink("down.jsonl"),
    );
    write(
        "nocursor.yaml",
        pg_source(&url, "nope"),
        file_sink("nocursor.jsonl"),
    );

    let plain = ferry_output(d, &["validate", "."]);
    assert!(plain.status.success(), "{plain:?}");

    let out = ferry_output(d, &["validate", "--check-connections", "."]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: ./missing.yaml: pipeline missing: sink (postgres): table no_such_table_here does not exist"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "error: ./down.yaml: pipeline down: source (postgres): connecting to PostgreSQL:"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: ./nocursor.yaml: pipeline nocursor: source (postgres): cursor column `nope` is not a column of {table}"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("good.yaml"), "{stderr}");
    assert!(stderr.contains("3 connection problem(s)"), "{stderr}");
    psql(&format!("DROP TABLE {table}"));
}

/// The sink fails while the source has nothing more to read: the pipeline
/// must still restart. (The source task used to notice a failed writer only
/// when it next sent records, which a source at its end never does: the
/// pipeline hung with the restart waiting for it.)
#[test]
fn a_sink_failure_while_the_source_is_idle_restarts_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_idle_{}", fastrand::u32(..));
    let (url, app) = tagged_url(&table);
    psql(&format!(
        "CREATE TABLE {table} (file text NOT NULL, seq bigint NOT NULL, pad text)"
    ));
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 10);
    fs::write(
        d.join("pg.yaml"),
        format!(
            "name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\n  poll_interval: 50ms\nsink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {table}\ndelivery:\n  flush_interval: 50ms\nerrors:\n  retry_backoff: 50ms\n"
        ),
    )
    .unwrap();
    let mut f = Ferry::start_with_env(d, &["run", "pg.yaml"], &[("PG_URL", &url)]);
    let count = || psql(&format!("SELECT count(*) FROM {table}"));
    assert!(
        wait_until(Duration::from_secs(30), || count() == "10"),
        "{}",
        f.log_text()
    );
    // The sink's idle connection dies; it finds out at its next write.
    assert_eq!(terminate(&app), 1);
    let mut more = String::new();
    for seq in 10..20 {
        more.push_str(&test_line("a", seq, 100));
    }
    fs::OpenOptions::new()
        .append(true)
        .open(d.join("in/a.jsonl"))
        .unwrap()
        .write_all(more.as_bytes())
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || count() == "20"),
        "the pipeline did not recover: {}",
        f.log_text()
    );
    f.signal(libc::SIGTERM);
    assert!(
        f.wait_for_exit(Duration::from_secs(30))
            .expect("exits")
            .success()
    );
    assert_eq!(
        psql(&format!(
            "SELECT count(DISTINCT seq), min(seq), max(seq) FROM {table}"
        )),
        "20|0|19"
    );
    drop_tables(&[&table], &[&table]);
}

/// `pg.yaml` in `d`: in/*.jsonl → `table`, named after the table.
fn file_to_postgres(d: &std::path::Path, table: &str, extra: &str) {
    fs::write(
        d.join("pg.yaml"),
        format!("name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {table}\n{extra}"),
    )
    .unwrap();
}

/// Numbers are carried as the exact text they were read as: a numeric
/// column gets 18446744073709551616 and 1.0e-400 as written (they were
/// rounded through a double: 18446744073709552000 and 0).
#[test]
fn exact_numbers_reach_numeric_columns_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_exact_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, n numeric)"
    ));
    fs::create_dir_all(d.join("in")).unwrap();
    let values = [
        "18446744073709551616",
        "1.0e-400",
        "123456789.123456789012345678901234567890",
        "-0.000000000000000000000000000001",
        "1e400",
    ];
    let text: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{{\"id\":{i},\"n\":{v}}}\n"))
        .collect();
    fs::write(d.join("in/a.jsonl"), text).unwrap();
    file_to_postgres(d, &table, "");
    run_once(d, "pg.yaml");
    for (i, v) in values.iter().enumerate() {
        let same = psql(&format!(
            "SELECT n = '{v}'::numeric FROM {table} WHERE id = {i}"
        ));
        assert_eq!(
            same,
            "t",
            "{v} arrived as {}",
            psql(&format!("SELECT n FROM {table} WHERE id = {i}"))
        );
    }
    drop_tables(&[&table], &[&table]);
}

/// A field a record leaves out takes the column's DEFAULT, an explicit
/// null is NULL — however the batch is split. A refused row in the middle
/// makes the careful path split the chunk; before, the same record got NULL
/// in one split and the DEFAULT in another.
#[test]
fn a_missing_field_takes_the_default_whatever_the_batch_split() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_default_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text DEFAULT 'dflt', w int NOT NULL DEFAULT 7)"
    ));
    fs::create_dir_all(d.join("in")).unwrap();
    let mut text = String::new();
    for id in 0..200 {
        text.push_str(&match id % 4 {
            0 => format!("{{\"id\":{id},\"v\":\"given\"}}\n"),
            1 => format!("{{\"id\":{id}}}\n"),
            2 => format!("{{\"id\":{id},\"v\":null,\"w\":1}}\n"),
            _ if id == 103 => format!("{{\"id\":{id},\"w\":\"not a number\"}}\n"),
            _ => format!("{{\"id\":{id},\"w\":3}}\n"),
        });
    }
    fs::write(d.join("in/a.jsonl"), text).unwrap();
    file_to_postgres(
        d,
        &table,
        "errors:\n  tolerance: all\n  dead_letter: dlq.jsonl\n",
    );
    run_once(d, "pg.yaml");
    assert_eq!(read_jsonl(&d.join("dlq.jsonl")).len(), 1);
    let by_kind = psql(&format!(
        "SELECT id % 4, count(*), string_agg(DISTINCT coalesce(v, 'NULL'), ','), string_agg(DISTINCT w::text, ',') FROM {table} GROUP BY 1 ORDER BY 1"
    ));
    assert_eq!(
        by_kind, "0|50|given|7\n1|50|dflt|7\n2|50|NULL|1\n3|49|dflt|3",
        "{by_kind}"
    );
    drop_tables(&[&table], &[&table]);
}

/// An operator finds ferry's connections in pg_stat_activity by name.
#[test]
fn connections_are_named_after_their_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_named_{}", fastrand::u32(..));
    psql(&format!("CREATE TABLE {table} (id int)"));
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(d.join("in/a.jsonl"), "{\"id\":1}\n").unwrap();
    file_to_postgres(d, &table, "");
    let mut f = start(d, &["run", "pg.yaml"]);
    let app = format!("ferry/{table}");
    let seen = wait_until(Duration::from_secs(30), || {
        psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"
        )) != "0"
    });
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    assert!(seen, "no connection named {app}: {}", f.log_text());
    drop_tables(&[&table], &[&table]);
}

/// The same pipeline run twice at once (two data folders, so no lock
/// between them) into one table: each commit stores positions only over
/// the ones its sink read, so the loser of a race rolls back its rows and
/// starts again from the winner's. Before, every row arrived twice.
#[test]
fn one_pipeline_run_twice_into_one_table_stores_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_twice_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (file text, seq bigint, pad text)"
    ));
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 100_000);
    file_to_postgres(d, &table, "delivery:\n  batch_size: 5000\n");
    let mut first = start(d, &["run", "--once", "--data-dir", "d1", "pg.yaml"]);
    let mut second = start(d, &["run", "--once", "--data-dir", "d2", "pg.yaml"]);
    for f in [&mut first, &mut second] {
        let status = f.wait_for_exit(Duration::from_secs(180)).expect("finishes");
        assert!(status.success(), "{}", f.log_text());
    }
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(DISTINCT seq) FROM {table}"
        )),
        "100000|100000"
    );
    let raced = first
        .log_text()
        .contains("another process committed positions")
        || second
            .log_text()
            .contains("another process committed positions");
    eprintln!("a commit lost the race and was rolled back: {raced}");
    drop_tables(&[&table], &[&table]);
}

/// A writer takes its id (nextval) and then, in the same statement, waits
/// before its row is written: it has no transaction id yet, so the snapshot
/// does not show it in flight, while a later id commits and is visible. The
/// source must not move past the later id until the writer is done (it
/// holds a row-exclusive lock on the table all along); before, its row was
/// skipped for good.
#[test]
fn a_row_whose_id_was_taken_before_its_transaction_wrote_is_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("ferry_early_id_{}", fastrand::u32(..));
    psql(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, writer int NOT NULL, n int NOT NULL)"
    ));
    source_config(
        d,
        &table,
        &format!("  table: {table}\n  incrementing_column: id\n"),
    );
    // A sequence WAL-logs (and so takes a transaction id) once every 32
    // values: use one up first, so the slow writer's nextval takes none.
    psql(&format!("SELECT nextval('{table}_id_seq')"));
    let mut f = start(d, &["run", "src.yaml"]);
    assert!(wait_until(Duration::from_secs(30), || f
        .log_text()
        .contains("pipeline started")));
    let slow = {
        let table = table.clone();
        std::thread::spawn(move || {
            psql(&format!(
                "INSERT INTO {table} (id, writer, n) SELECT a.id, 1, 0 FROM (SELECT nextval('{table}_id_seq') AS id) a, \
                 LATERAL (SELECT pg_sleep(3) WHERE a.id IS NOT NULL) s"
            ))
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    psql(&format!("INSERT INTO {table} (writer, n) VALUES (2, 0)"));
    slow.join().unwrap();
    let both = wait_until(Duration::from_secs(20), || {
        count_lines(&d.join("out.jsonl")) >= 2
    });
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    let ids: Vec<u64> = read_jsonl(&d.join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert!(both, "rows out: {ids:?}\n{}", f.log_text());
    assert_eq!(ids, [2, 3]);
    psql(&format!("DROP TABLE {table}"));
}
