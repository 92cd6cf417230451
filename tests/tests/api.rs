//! The admin API of a running ferry, endpoint by endpoint, against real
//! pipelines (a file → PostgreSQL pipeline and one that fails): states,
//! counters that match what was delivered, rates, positions, offsets,
//! metrics, readiness, the error statuses, the token rules, offsets moved
//! by PUT, and the OpenAPI document held against every answer.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use ferry_tests::*;
use serde_json::{Value, json};

fn api_base(dir: &Path) -> String {
    let addr = fs::read_to_string(dir.join("data/api.addr")).expect("ferry notes its API address");
    format!("http://{}", addr.trim())
}

/// `ferry ARGS…` in `dir`, and its API's base URL once it listens.
fn start_api(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Ferry, String) {
    let f = Ferry::start_with_env(dir, args, env);
    assert!(
        wait_until(Duration::from_secs(20), || dir
            .join("data/api.addr")
            .exists()),
        "{}",
        f.log_text()
    );
    let base = api_base(dir);
    (f, base)
}

/// Pauses `name` through the API and waits until it is paused.
fn pause(base: &str, name: &str) {
    let path = format!("/pipelines/{name}");
    assert_eq!(http(base, "POST", &format!("{path}/pause"), None).0, 202);
    assert!(
        wait_until(Duration::from_secs(20), || get_json(base, &path).1["state"]
            ["name"]
            == "paused"),
        "{name} never paused"
    );
}

fn resume(base: &str, name: &str) {
    let path = format!("/pipelines/{name}/resume");
    assert_eq!(http(base, "POST", &path, None).0, 202);
}

/// The pipeline's total lag, as `GET /pipelines/{name}` shows it.
fn lag_of(base: &str, name: &str) -> Value {
    get_json(base, &format!("/pipelines/{name}")).1["lag"].clone()
}

fn get_json(base: &str, path: &str) -> (u16, Value) {
    let (status, body) = http(base, "GET", path, None);
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"));
    (status, v)
}

/// A line of the metrics text, by its series.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `g.yaml`: a generator that never ends, at 500 records/s, into a file.
fn endless_generator(d: &Path) {
    fs::write(
        d.join("g.yaml"),
        "name: g\nsource:\n  type: generate\n  rate: 500\nsink:\n  type: file\n  path: out.jsonl\ndelivery:\n  flush_interval: 100ms\n",
    )
    .unwrap();
}

#[test]
fn every_endpoint_answers_with_what_the_pipelines_did() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("api_{}", std::process::id());
    psql_at(
        &pg_url(),
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (seq bigint, file text, pad text)"
        ),
    );
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 500);
    // Named after its table: positions kept in PostgreSQL's ferry_offsets
    // table outlive the run. The password is one PostgreSQL does not ask for (trust): it must
    // still never show.
    let url = pg_url().replacen("postgres://root@", "postgres://root:S3cretPw@", 1);
    fs::write(
        d.join("topg.yaml"),
        format!("name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\n  poll_interval: 50ms\nsink:\n  type: postgres\n  url: ${{PG}}\n  table: {table}\ndelivery:\n  flush_interval: 100ms\n"),
    )
    .unwrap();
    // Fails at once: its sink's table does not exist.
    fs::write(
        d.join("broken.yaml"),
        format!("name: broken\nsource:\n  type: generate\n  count: 1\nsink:\n  type: postgres\n  url: {}\n  table: no_such_table_{table}\n", pg_url()),
    )
    .unwrap();
    let (mut f, base) = start_api(
        d,
        &["run", "topg.yaml", "broken.yaml"],
        &[("PG", url.as_str())],
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (_, p) = get_json(&base, &format!("/pipelines/{table}"));
            p["records_out"] == 500
        }),
        "{}",
        f.log_text()
    );

    let (status, body) = http(&base, "GET", "/health", None);
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let (status, list) = get_json(&base, "/pipelines");
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{list}");
    assert!(
        names.contains(&table.as_str()) && names.contains(&"broken"),
        "{list}"
    );
    let text = list.to_string();
    assert!(!text.contains("S3cretPw"), "a password shows: {text}");

    let (_, p) = get_json(&base, &format!("/pipelines/{table}"));
    assert_eq!(p["state"]["name"], "running", "{p}");
    assert!(p["file"].as_str().unwrap().ends_with("topg.yaml"), "{p}");
    assert!(p["sink"].as_str().unwrap().contains(&table), "{p}");
    assert_eq!(
        p["delivery"]
            .as_str()
            .map(|s| s.starts_with("exactly-once")),
        Some(true),
        "{p}"
    );
    assert_eq!(p["records_in"], 500);
    let rows: u64 = psql_at(&pg_url(), &format!("SELECT count(*) FROM {table}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rows, 500, "the counters say what was delivered");
    assert!(p["bytes_out"].as_u64().unwrap() > 500 * 20, "{p}");
    assert!(p["rates"]["10s"]["records_per_second"].is_number(), "{p}");
    assert!(p["last_commit"].is_string(), "{p}");
    let parts = p["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{p}");
    assert!(
        parts[0]["label"].as_str().unwrap().ends_with("in/a.jsonl"),
        "{p}"
    );
    assert_eq!(parts[0]["committed"], parts[0]["read"], "{p}");

    // The lag of the file: nothing left to read, in bytes.
    assert!(
        wait_until(Duration::from_secs(15), || {
            get_json(&base, &format!("/pipelines/{table}")).1["partitions"][0]["lag"]["unit"]
                == "bytes"
        }),
        "{}",
        f.log_text()
    );
    let (_, p) = get_json(&base, &format!("/pipelines/{table}"));
    assert_eq!(p["partitions"][0]["lag"]["amount"], 0.0, "{p}");
    assert_eq!(p["lag"]["amount"], 0.0, "{p}");

    let (status, offsets) = get_json(&base, &format!("/pipelines/{table}/offsets"));
    assert_eq!(status, 200);
    assert_eq!(
        offsets["partitions"].as_array().map(Vec::len),
        Some(1),
        "{offsets}"
    );

    // The failed pipeline: visible with its error, not ready, not steerable.
    assert!(wait_until(Duration::from_secs(20), || get_json(
        &base,
        "/pipelines/broken"
    )
    .1["state"]["name"]
        == "failed"));
    let (_, b) = get_json(&base, "/pipelines/broken");
    assert!(
        b["state"]["error"]
            .as_str()
            .unwrap()
            .contains("no_such_table"),
        "{b}"
    );
    assert!(b["last_error"]["at"].is_string(), "{b}");
    let (status, ready) = get_json(&base, "/ready");
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("broken: failed"),
        "{ready}"
    );
    let (status, e) = http(&base, "POST", "/pipelines/broken/pause", None);
    assert_eq!(status, 409, "{e}");
    assert!(e.contains("\"error\""), "{e}");
    let (status, e) = get_json(&base, "/pipelines/nope");
    assert_eq!(
        (status, e["error"].as_str().unwrap()),
        (404, "no pipeline named \"nope\"")
    );
    let (status, e) = get_json(&base, "/no/such/thing");
    assert_eq!(status, 404, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("no such endpoint"),
        "{e}"
    );

    // The metrics say the same.
    let (status, m) = http(&base, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &m,
            &format!(r#"ferry_records_out_total{{pipeline="{table}"}}"#)
        ),
        Some(500.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(r#"ferry_records_in_total{{pipeline="{table}"}}"#)
        ),
        Some(500.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(r#"ferry_pipeline_state{{pipeline="{table}",state="running"}}"#)
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"ferry_pipeline_state{pipeline="broken",state="failed"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"ferry_pipeline_state{pipeline="broken",state="running"}"#
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            &format!(r#"ferry_commit_duration_seconds_count{{pipeline="{table}"}}"#)
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            &format!(r#"ferry_bytes_out_total{{pipeline="{table}"}}"#)
        )
        .unwrap()
            > 0.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            &format!(r#"ferry_last_commit_timestamp_seconds{{pipeline="{table}"}}"#)
        )
        .is_some(),
        "{m}"
    );
    assert!(!m.contains("S3cretPw"));

    // The history has a point a second.
    let points = || {
        let (_, h) = get_json(&base, &format!("/pipelines/{table}/history"));
        h["points"].as_array().map_or(0, Vec::len)
    };
    assert!(wait_until(Duration::from_secs(10), || points() >= 3));

    // Restarted, the failed pipeline fails again: the table is still missing.
    let (status, _) = http(&base, "POST", "/pipelines/broken/restart", None);
    assert_eq!(status, 202);
    let (status, ok) = http(&base, "POST", &format!("/pipelines/{table}/pause"), None);
    assert_eq!(status, 202, "{ok}");
    assert!(wait_until(Duration::from_secs(20), || get_json(
        &base,
        &format!("/pipelines/{table}")
    )
    .1["state"]["name"]
        == "paused"));

    // Exit 1: a pipeline failed.
    f.signal(libc::SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(20)).expect("stops");
    assert_eq!(status.code(), Some(1), "{}", f.log_text());
    psql_at(&pg_url(), &format!("DROP TABLE IF EXISTS {table}"));
}

#[test]
fn with_a_token_every_endpoint_but_health_wants_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(
        d.join("p.yaml"),
        "name: p\nsource:\n  type: generate\n  count: 10\nsink:\n  type: file\n  path: out.jsonl\n",
    )
    .unwrap();
    // A token a header cannot carry as it is: refused at start.
    fs::write(d.join("accented"), "tökén").unwrap();
    let (status, log) = run_to_end(
        d,
        &["run", "--api-token-file", "accented", "p.yaml"],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("visible ASCII"), "{log}");
    // Beyond loopback without a token: refused, said why.
    let (status, log) = run_to_end(
        d,
        &["run", "--api", "0.0.0.0:0", "p.yaml"],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("only with a token"), "{log}");

    fs::write(d.join("token"), "s3cr3t-t0ken\n").unwrap();
    let args = [
        "run",
        "--api",
        "0.0.0.0:0",
        "--api-token-file",
        "token",
        "p.yaml",
    ];
    let (mut f, listening) = start_api(d, &args, &[]);
    let port = listening.rsplit(':').next().unwrap().to_string();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(http(&base, "GET", "/health", None).0, 200);
    let (status, body) = http(&base, "GET", "/pipelines", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let lower = [("Authorization", "bearer  s3cr3t-t0ken")];
    // (Not /ready: 503 while the pipeline starts.)
    assert_eq!(
        http_with(&base, "GET", "/pipelines", &lower, None).0,
        200,
        "the scheme's case does not matter"
    );
    let wrong = [("Authorization", "Bearer guess")];
    assert_eq!(http_with(&base, "GET", "/metrics", &wrong, None).0, 401);
    let right = [("Authorization", "Bearer s3cr3t-t0ken")];
    let (status, body) = http_with(&base, "GET", "/pipelines", &right, None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"p\""), "{body}");
    // The control commands send it.
    let out = ferry_output(
        d,
        &[
            "status",
            "--api",
            &format!("127.0.0.1:{port}"),
            "--api-token-file",
            "token",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("p "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = ferry_output(d, &["status", "--api", &format!("127.0.0.1:{port}")]);
    assert!(!out.status.success());
    f.stop();
    let log = f.log_text();
    assert!(log.contains("GET /pipelines from 127.0.0.1"), "{log}");
    assert!(
        log.contains("refused: no token") && log.contains("refused: a wrong token"),
        "{log}"
    );
    assert!(
        !log.contains("guess") && !log.contains("s3cr3t-t0ken"),
        "{log}"
    );
}

#[test]
fn the_lag_of_a_kafka_source_is_the_messages_past_the_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let brokers = kafka_brokers();
    let topic = format!("api-lag-{}", std::process::id());
    create_topic(&brokers, &topic, 2);
    produce_test_lines(&brokers, &topic, 100, None);
    fs::write(
        d.join("k.yaml"),
        format!("name: k\nsource:\n  type: kafka\n  brokers: {brokers}\n  topics: [{topic}]\n  group_id: {topic}\nsink:\n  type: file\n  path: out.jsonl\ndelivery:\n  flush_interval: 100ms\n"),
    )
    .unwrap();
    let (mut f, base) = start_api(d, &["run", "k.yaml"], &[]);
    assert!(
        wait_until(Duration::from_secs(60), || lines_in(&d.join("out.jsonl"))
            == 100),
        "{}",
        f.log_text()
    );
    let lag = || lag_of(&base, "k");
    assert!(
        wait_until(Duration::from_secs(20), || lag()["amount"] == 0.0),
        "{}",
        lag()
    );
    assert_eq!(lag()["unit"], "messages");
    // Paused, the backlog grows, and the lag shows it.
    pause(&base, "k");
    produce_test_lines(&brokers, &topic, 50, None);
    // 50 with Kafka; Tansu, the broker here, moves its offsets (and so its
    // high watermarks) by record batch, not by message: more than 0 is
    // what holds on both.
    let grown = || lag()["amount"].as_f64().unwrap_or(0.0);
    assert!(
        wait_until(Duration::from_secs(20), || grown() > 0.0),
        "{}",
        lag()
    );
    let backlog = grown();
    let (_, m) = http(&base, "GET", "/metrics", None);
    let series: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("ferry_source_lag{pipeline=\"k\"") && l.contains("unit=\"messages\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(series, backlog, "{m}");
    resume(&base, "k");
    assert!(wait_until(Duration::from_secs(30), || lines_in(
        &d.join("out.jsonl")
    ) == 150));
    assert!(
        wait_until(Duration::from_secs(20), || lag()["amount"] == 0.0),
        "{}",
        lag()
    );
    // Offsets moved by PUT are checked against the brokers' watermarks.
    let path = "/pipelines/k/offsets";
    let put = |body: String| http(&base, "PUT", path, Some(&body));
    let (status, e) = put(format!(
        r#"{{"partitions": [{{"partition": "{topic}/0", "offset": 999999}}, {{"partition": "other-topic/0", "offset": 1}}]}}"#
    ));
    assert_eq!(status, 400, "{e}");
    assert!(
        e.contains("outside them") && e.contains("not one this pipeline reads"),
        "{e}"
    );
    // Back to the low watermark: inside them. (Not "where it is": Tansu
    // numbers offsets by batch, and its committed offsets pass the high
    // watermark it reports.)
    let (status, ok) = put(format!(
        r#"{{"partitions": [{{"partition": "{topic}/0", "offset": 0}}]}}"#
    ));
    assert_eq!(status, 200, "{ok}");
    f.stop();
    delete_topic(&brokers, &topic);
}

#[test]
fn the_lag_of_a_postgres_source_is_the_rows_past_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("api_lag_{}", std::process::id());
    let insert = |from: u64, to: u64| {
        psql_at(
            &pg_url(),
            &format!(
                "INSERT INTO {table} (v) SELECT 'row ' || g FROM generate_series({from}, {to}) g"
            ),
        );
    };
    psql_at(
        &pg_url(),
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigserial PRIMARY KEY, v text)"
        ),
    );
    insert(1, 100);
    fs::write(
        d.join("pg.yaml"),
        format!("name: {table}\nsource:\n  type: postgres\n  url: {}\n  table: {table}\n  incrementing_column: id\n  poll_interval: 100ms\nsink:\n  type: file\n  path: out.jsonl\ndelivery:\n  flush_interval: 100ms\n", pg_url()),
    )
    .unwrap();
    let (mut f, base) = start_api(d, &["run", "pg.yaml"], &[]);
    assert!(
        wait_until(Duration::from_secs(30), || lines_in(&d.join("out.jsonl"))
            == 100),
        "{}",
        f.log_text()
    );
    let lag = || lag_of(&base, &table);
    assert!(
        wait_until(Duration::from_secs(20), || lag()["amount"] == 0.0),
        "{}",
        lag()
    );
    assert_eq!(lag()["unit"], "rows");
    pause(&base, &table);
    insert(101, 130);
    assert!(
        wait_until(Duration::from_secs(20), || lag()["amount"] == 30.0),
        "{}",
        lag()
    );
    assert_eq!(lag()["estimate"], false);
    resume(&base, &table);
    assert!(wait_until(Duration::from_secs(30), || lines_in(
        &d.join("out.jsonl")
    ) == 130));
    assert!(
        wait_until(Duration::from_secs(20), || lag()["amount"] == 0.0),
        "{}",
        lag()
    );
    // A cursor moved by PUT: the server casts it to the column's type.
    let path = format!("/pipelines/{table}/offsets");
    let (_, offsets) = get_json(&base, &path);
    let key = offsets["partitions"][0]["partition"]
        .as_str()
        .unwrap()
        .to_string();
    let put = |offset: &str| {
        http(
            &base,
            "PUT",
            &path,
            Some(&format!(
                r#"{{"partitions": [{{"partition": "{key}", "offset": {offset}}}]}}"#
            )),
        )
    };
    let (status, e) = put(r#""abc""#);
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("column's type"), "{e}");
    let (status, ok) = put(r#""100""#);
    assert_eq!(status, 200, "{ok}");
    // Rows 101 to 130 are read again.
    assert!(
        wait_until(Duration::from_secs(30), || lines_in(&d.join("out.jsonl"))
            == 160),
        "{}",
        lines_in(&d.join("out.jsonl"))
    );
    f.stop();
    psql_at(&pg_url(), &format!("DROP TABLE IF EXISTS {table}"));
}

#[test]
fn requests_a_foreign_page_could_make_and_racing_resets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    endless_generator(d);
    let (mut f, base) = start_api(d, &["run", "g.yaml"], &[]);
    let host = base.trim_start_matches("http://").to_string();
    // CSRF: a page elsewhere posting here. DNS rebinding: another name for
    // this address.
    let foreign = [("Origin", "http://evil.example")];
    let (status, body) = http_with(&base, "POST", "/pipelines/g/pause", &foreign, None);
    assert_eq!(status, 403, "{body}");
    let rebound = [("Host", "rebind.evil.example:8083")];
    assert_eq!(http_with(&base, "GET", "/pipelines", &rebound, None).0, 403);
    // The API's own page, and tools, are welcome.
    let own = format!("http://{host}");
    let (status, _) = http_with(
        &base,
        "GET",
        "/pipelines",
        &[("Origin", own.as_str())],
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        state_of(&base, "g"),
        "running",
        "nothing was paused by the foreign page"
    );

    // Ten resets at once: one at a time, never a 500, the pipeline never fails.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| s.spawn(|| http(&base, "DELETE", "/pipelines/g/offsets", None).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(wait_until(Duration::from_secs(20), || state_of(&base, "g")
        == "running"));
    // A name that is not a pipeline's is not sent.
    let out = ferry_output(d, &["pause", "g/resume?x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("letters, digits"));
    f.stop();
    assert!(
        f.log_text()
            .contains("refused: a request from a page of http://evil.example")
    );
}

fn state_of(base: &str, name: &str) -> String {
    let (_, p) = get_json(base, &format!("/pipelines/{name}"));
    p["state"]["name"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_wrong_method_is_a_json_error_and_the_address_note_goes_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(
        d.join("g.yaml"),
        "name: g\nsource:\n  type: generate\n  count: 10\nsink:\n  type: file\n  path: out.jsonl\n",
    )
    .unwrap();
    let (mut f, base) = start_api(d, &["run", "g.yaml"], &[]);
    let (status, body) = http(&base, "PUT", "/pipelines/g/pause", None);
    assert_eq!(status, 405, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("PUT is not an operation"),
        "{body}"
    );
    f.stop();
    assert!(
        !d.join("data/api.addr").exists(),
        "a stale address is left behind"
    );
}

#[test]
fn the_lag_of_a_change_stream_is_the_seconds_behind_the_server() {
    use mongodb::bson::{Document, doc};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = format!("api_lag_{}", std::process::id());
    let insert = |from: i64, to: i64| {
        let db = db.clone();
        with_mongodb(async move |c| {
            let docs: Vec<Document> = (from..to).map(|i| doc! {"_id": i}).collect();
            c.database(&db)
                .collection::<Document>("items")
                .insert_many(docs)
                .await
                .expect("insert");
        });
    };
    fs::write(
        d.join("m.yaml"),
        format!("name: m\nsource:\n  type: mongodb\n  uri: {}\n  database: {db}\n  collection: items\n  snapshot: never\nsink:\n  type: file\n  path: out.jsonl\ndelivery:\n  flush_interval: 50ms\n", mongodb_uri()),
    )
    .unwrap();
    let (mut f, base) = start_api(d, &["run", "m.yaml"], &[]);
    assert!(wait_until(Duration::from_secs(20), || get_json(
        &base,
        "/pipelines/m"
    )
    .1["state"]["name"]
        == "running"));
    std::thread::sleep(Duration::from_secs(1));
    insert(0, 10);
    assert!(
        wait_until(Duration::from_secs(30), || lines_in(&d.join("out.jsonl"))
            == 10),
        "{}",
        f.log_text()
    );
    let lag = || lag_of(&base, "m");
    assert!(
        wait_until(Duration::from_secs(20), || lag()["amount"] == 0.0),
        "{}",
        lag()
    );
    assert_eq!(lag()["unit"], "seconds");
    // Paused, the change waiting falls behind the server's present.
    pause(&base, "m");
    insert(10, 20);
    assert!(
        wait_until(Duration::from_secs(30), || lag()["amount"]
            .as_f64()
            .unwrap_or(0.0)
            >= 2.0),
        "{} {}",
        lag(),
        get_json(&base, "/pipelines/m").1["lag_error"]
    );
    resume(&base, "m");
    assert!(wait_until(Duration::from_secs(30), || lines_in(
        &d.join("out.jsonl")
    ) == 20));
    assert!(
        wait_until(Duration::from_secs(20), || lag()["amount"] == 0.0),
        "{}",
        lag()
    );
    f.stop();
}

#[test]
fn values_from_the_environment_are_masked_in_answers_as_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(
        d.join("g.yaml"),
        "name: g\nsource:\n  type: generate\n  count: 1\nsink:\n  type: file\n  path: ${OUT}/out.jsonl\n",
    )
    .unwrap();
    // A folder that cannot be made: the error quotes the path.
    let (mut f, base) = start_api(d, &["run", "g.yaml"], &[("OUT", "/dev/null/S3cretDir")]);
    assert!(wait_until(Duration::from_secs(20), || get_json(
        &base,
        "/pipelines/g"
    )
    .1["state"]["name"]
        == "failed"));
    let (_, body) = http(&base, "GET", "/pipelines/g", None);
    assert!(body.contains("***"), "{body}");
    assert!(!body.contains("S3cretDir"), "{body}");
    let (_, metrics) = http(&base, "GET", "/metrics", None);
    assert!(!metrics.contains("S3cretDir"), "{metrics}");
    f.signal(libc::SIGTERM);
    assert!(f.wait_for_exit(Duration::from_secs(20)).is_some());
    assert!(!f.log_text().contains("S3cretDir"));
}

/// `PUT /pipelines/{name}/offsets` into a sink that keeps its positions
/// (PostgreSQL): the source checks every position first (a refusal names
/// each bad one and changes nothing), the pipeline is paused around the
/// change, a partition moved back is read again from there and one set to
/// null from its start — also after a kill -9 — and a failed pipeline's
/// offsets can be moved before it is restarted.
#[test]
fn offsets_put_moves_partitions_and_refuses_what_the_source_cannot_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = format!("api_put_{}", std::process::id());
    psql_at(
        &pg_url(),
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (seq bigint, file text, pad text)"
        ),
    );
    fs::create_dir_all(d.join("in")).unwrap();
    // Lines of 100 bytes: line k starts at byte 100·k.
    write_test_input(&d.join("in/a.jsonl"), "a", 100);
    write_test_input(&d.join("in/b.jsonl"), "b", 100);
    let pipeline = format!(
        "name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\n  poll_interval: 50ms\nsink:\n  type: postgres\n  url: {}\n  table: {table}\ndelivery:\n  flush_interval: 100ms\n",
        pg_url()
    );
    fs::write(d.join("p.yaml"), &pipeline).unwrap();
    let rows = |file: &str| -> i64 {
        psql_at(
            &pg_url(),
            &format!("SELECT count(*) FROM {table} WHERE file = '{file}'"),
        )
        .trim()
        .parse()
        .unwrap()
    };
    let (mut f, base) = start_api(d, &["run", "p.yaml"], &[]);
    assert!(
        wait_until(Duration::from_secs(30), || rows("a") == 100
            && rows("b") == 100),
        "{}",
        f.log_text()
    );
    let path = format!("/pipelines/{table}/offsets");
    let (_, offsets) = get_json(&base, &path);
    let key_of = |name: &str| {
        offsets["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} in {offsets}"))["partition"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (key_of("a.jsonl"), key_of("b.jsonl"));
    let put = |body: String| http(&base, "PUT", &path, Some(&body));

    // Refused, every bad position named at once, nothing changed.
    let (status, e) = put(format!(
        r#"{{"partitions": [{{"partition": "{a}", "offset": 150}}, {{"partition": "{b}", "offset": 99999}}, {{"partition": "file:0:0", "offset": 0}}]}}"#
    ));
    assert_eq!(status, 400, "{e}");
    for why in [
        "not the start of a line",
        "past its end",
        "not a partition this pipeline has committed",
    ] {
        assert!(e.contains(why), "{why}: {e}");
    }
    let (status, e) = put(format!(
        r#"{{"partitions": [{{"partition": "{a}", "offset": "x"}}]}}"#
    ));
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("byte offset"), "{e}");
    let (status, e) = put(r#"{"partitons": []}"#.to_string());
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("unknown field"), "{e}");
    let (status, e) = put(format!(
        r#"{{"partitions": [{{"partition": "{a}", "offset": 0}}, {{"partition": "{a}", "offset": 100}}]}}"#
    ));
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("given twice"), "{e}");
    let (status, _) = http(
        &base,
        "PUT",
        "/pipelines/nope/offsets",
        Some(r#"{"partitions": [{"partition": "x", "offset": 1}]}"#),
    );
    assert_eq!(status, 404);
    assert_eq!(
        get_json(&base, &path).1["partitions"],
        offsets["partitions"]
    );
    assert_eq!(
        get_json(&base, &format!("/pipelines/{table}")).1["state"]["name"],
        "running"
    );

    // a back to its line 50, b from its start: read again from there.
    let (status, ok) = put(format!(
        r#"{{"partitions": [{{"partition": "{a}", "offset": 5000}}, {{"partition": "{b}", "offset": null}}]}}"#
    ));
    assert_eq!(status, 200, "{ok}");
    assert!(
        wait_until(Duration::from_secs(30), || rows("a") == 150
            && rows("b") == 200),
        "a {} b {}: {}",
        rows("a"),
        rows("b"),
        f.log_text()
    );
    assert_eq!(
        get_json(&base, &format!("/pipelines/{table}")).1["state"]["name"],
        "running"
    );
    // Resumed after a kill -9 from what was committed since: nothing again.
    f.kill9();
    let (mut f, base) = {
        fs::remove_file(d.join("data/api.addr")).ok();
        start_api(d, &["run", "p.yaml"], &[])
    };
    assert!(wait_until(Duration::from_secs(20), || get_json(
        &base,
        &format!("/pipelines/{table}")
    )
    .1["state"]["name"]
        == "running"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!((rows("a"), rows("b")), (150, 200), "{}", f.log_text());

    // A failed pipeline's offsets are moved for its restart.
    psql_at(
        &pg_url(),
        &format!("ALTER TABLE {table} RENAME TO {table}_away"),
    );
    fs::write(d.join("in/a.jsonl"), {
        let mut s = fs::read_to_string(d.join("in/a.jsonl")).unwrap();
        s.push_str(&test_line("a", 100, 100));
        s
    })
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || get_json(
            &base,
            &format!("/pipelines/{table}")
        )
        .1["state"]["name"]
            == "failed"),
        "{}",
        f.log_text()
    );
    psql_at(
        &pg_url(),
        &format!("ALTER TABLE {table}_away RENAME TO {table}"),
    );
    let path = format!("/pipelines/{table}/offsets");
    let (status, ok) = http(
        &base,
        "PUT",
        &path,
        Some(&format!(
            r#"{{"partitions": [{{"partition": "{a}", "offset": 9900}}]}}"#
        )),
    );
    assert_eq!(status, 200, "{ok}");
    assert!(ok.contains("once restarted"), "{ok}");
    assert_eq!(
        http(&base, "POST", &format!("/pipelines/{table}/restart"), None).0,
        202
    );
    // Lines 99 and 100 of a: 150 + 2.
    assert!(
        wait_until(Duration::from_secs(30), || rows("a") == 152),
        "a {}: {}",
        rows("a"),
        f.log_text()
    );
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(20)).expect("stops");
    psql_at(&pg_url(), &format!("DROP TABLE IF EXISTS {table}"));
}

/// The OpenAPI document against the API itself: it lists exactly the
/// operations ferry serves, and every answer of a running ferry —
/// successes and errors — has a status the document lists for it and a
/// body its schema accepts (checked by the `jsonschema` crate).
/// Holds an answer to `method template` against the document.
fn conforms(doc: &Value, method: &str, template: &str, status: u16, body: &str) {
    let op = &doc["paths"][template][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {template} is not in the document");
    let response = &op["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {template} answered {status}, which the document does not list for it: {body}"
    );
    let Some(schema) = response["content"]["application/json"].get("schema") else {
        return;
    };
    let value: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{method} {template} {status}: not JSON ({e}): {body}"));
    // The schema's references point into the document's components.
    let root = json!({"allOf": [schema], "components": doc["components"]});
    let validator = jsonschema::validator_for(&root).expect("the document's schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {template} {status}: {errors:?} in {body}"
    );
}

#[test]
fn every_answer_of_a_running_ferry_matches_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    endless_generator(d);
    // Fails at once: its sink's table does not exist.
    fs::write(
        d.join("broken.yaml"),
        format!(
            "name: broken\nsource:\n  type: generate\n  count: 1\nsink:\n  type: postgres\n  url: {}\n  table: no_such_table_openapi\n",
            pg_url()
        ),
    )
    .unwrap();
    let (mut f, base) = start_api(d, &["run", "g.yaml", "broken.yaml"], &[]);
    let (status, text) = http(&base, "GET", "/openapi.json", None);
    assert_eq!(status, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");

    // Exactly what is served.
    let listed: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let served: BTreeSet<String> = [
        "GET /health",
        "GET /ready",
        "GET /metrics",
        "GET /pipelines",
        "GET /pipelines/{name}",
        "GET /pipelines/{name}/history",
        "POST /pipelines/{name}/pause",
        "POST /pipelines/{name}/resume",
        "POST /pipelines/{name}/restart",
        "GET /pipelines/{name}/offsets",
        "PUT /pipelines/{name}/offsets",
        "DELETE /pipelines/{name}/offsets",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(listed, served);

    assert!(
        wait_until(Duration::from_secs(20), || {
            let (_, p) = http(&base, "GET", "/pipelines/g", None);
            serde_json::from_str::<Value>(&p).is_ok_and(|p| p["last_commit"].is_string())
        }),
        "{}",
        f.log_text()
    );
    assert!(wait_until(Duration::from_secs(20), || http(
        &base,
        "GET",
        "/pipelines/broken",
        None
    )
    .1
    .contains(r#""name":"failed""#)));
    // Every operation, on a running, a failed and an unknown pipeline, with
    // good and bad bodies.
    let good = r#"{"partitions": [{"partition": "generate", "offset": 5}]}"#;
    let calls: &[(&str, &str, &str, Option<&str>)] = &[
        ("GET", "/health", "/health", None),
        ("GET", "/ready", "/ready", None),
        ("GET", "/metrics", "/metrics", None),
        ("GET", "/pipelines", "/pipelines", None),
        ("GET", "/pipelines/{name}", "/pipelines/g", None),
        ("GET", "/pipelines/{name}", "/pipelines/broken", None),
        ("GET", "/pipelines/{name}", "/pipelines/nope", None),
        (
            "GET",
            "/pipelines/{name}/history",
            "/pipelines/g/history",
            None,
        ),
        (
            "GET",
            "/pipelines/{name}/history",
            "/pipelines/nope/history",
            None,
        ),
        (
            "GET",
            "/pipelines/{name}/offsets",
            "/pipelines/g/offsets",
            None,
        ),
        (
            "GET",
            "/pipelines/{name}/offsets",
            "/pipelines/nope/offsets",
            None,
        ),
        (
            "PUT",
            "/pipelines/{name}/offsets",
            "/pipelines/g/offsets",
            Some(good),
        ),
        (
            "PUT",
            "/pipelines/{name}/offsets",
            "/pipelines/g/offsets",
            Some("{}"),
        ),
        (
            "PUT",
            "/pipelines/{name}/offsets",
            "/pipelines/g/offsets",
            Some(r#"{"partitions": [{"partition": "other", "offset": -1}]}"#),
        ),
        (
            "PUT",
            "/pipelines/{name}/offsets",
            "/pipelines/nope/offsets",
            Some(good),
        ),
        (
            "DELETE",
            "/pipelines/{name}/offsets",
            "/pipelines/g/offsets",
            None,
        ),
        (
            "DELETE",
            "/pipelines/{name}/offsets",
            "/pipelines/nope/offsets",
            None,
        ),
        (
            "POST",
            "/pipelines/{name}/pause",
            "/pipelines/g/pause",
            None,
        ),
        (
            "POST",
            "/pipelines/{name}/pause",
            "/pipelines/broken/pause",
            None,
        ),
        (
            "POST",
            "/pipelines/{name}/resume",
            "/pipelines/g/resume",
            None,
        ),
        (
            "POST",
            "/pipelines/{name}/resume",
            "/pipelines/nope/resume",
            None,
        ),
        (
            "POST",
            "/pipelines/{name}/restart",
            "/pipelines/g/restart",
            None,
        ),
        (
            "POST",
            "/pipelines/{name}/restart",
            "/pipelines/broken/restart",
            None,
        ),
        ("GET", "/pipelines/{name}", "/pipelines/g", None),
    ];
    let mut statuses = BTreeSet::new();
    for (method, template, path, body) in calls {
        let (status, answer) = http(&base, method, path, *body);
        conforms(&doc, method, template, status, &answer);
        statuses.insert(status);
    }
    // Errors among them, not only successes.
    for s in [400, 404, 409, 503] {
        assert!(statuses.contains(&s), "no {s} among {statuses:?}");
    }
    // A foreign page's request: 403, as listed.
    let (status, answer) = http_with(
        &base,
        "POST",
        "/pipelines/g/pause",
        &[("Origin", "http://evil.example")],
        None,
    );
    conforms(&doc, "POST", "/pipelines/{name}/pause", status, &answer);
    assert_eq!(status, 403);
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(20)).expect("stops");
}
