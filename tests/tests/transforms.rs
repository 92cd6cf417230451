//! `transforms:` on real pipelines through the binary: each step's effect
//! on the records delivered, filter and remap (VRL), a record a step fails
//! on with both tolerances, `validate`'s errors at their places, and
//! exactly-once across kill -9 with a chain in the middle.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ferry_tests::*;

fn pipeline(d: &Path, name: &str, transforms: &str, extra: &str) {
    fs::write(
        d.join(format!("{name}.yaml")),
        format!(
            "name: {name}\nsource:\n  type: file\n  path: in/*.jsonl\n  poll_interval: 50ms\ntransforms:\n{transforms}sink:\n  type: file\n  path: out/{name}.jsonl\ndelivery:\n  batch_size: 2500\n  flush_interval: 100ms\n{extra}"
        ),
    )
    .unwrap();
}

#[test]
fn every_step_changes_the_records_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(
        d.join("in/orders.jsonl"),
        concat!(
            r#"{"cust": "c1", "amt": "12.50", "qty": "3", "paid": "yes", "password": "x", "internal": {"debug": 1, "host": "h1"}, "created": "2026-12-03 14:51:30"}"#,
            "\n",
            r#"{"cust": "c2", "amt": 7, "qty": 1, "paid": false, "password": "y", "internal": {"debug": 2, "host": "h2"}, "created": "2026-01-01 00:00:00"}"#,
            "\n",
        ),
    )
    .unwrap();
    pipeline(
        d,
        "orders",
        concat!(
            "  - type: rename\n    fields: {cust: customer_id, amt: amount}\n",
            "  - type: drop\n    fields: [password, internal.debug]\n",
            "  - type: set\n    fields: {source_system: orders-v1, meta.version: 2}\n",
            "  - type: cast\n    fields: {amount: float, qty: integer, paid: boolean}\n",
            "  - type: timestamp\n    field: created\n    parse: '%Y-%m-%d %H:%M:%S'\n    format: unix_ms\n",
            "  - type: flatten\n    separator: _\n",
            "  - type: keep\n    fields: [customer_id, amount, qty, paid, internal_host, source_system, meta_version, created]\n",
        ),
        "",
    );
    let (status, log) = run_to_end(
        d,
        &["run", "--once", "orders.yaml"],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/orders.jsonl"));
    assert_eq!(
        out,
        vec![
            serde_json::json!({"customer_id": "c1", "amount": 12.5, "qty": 3, "paid": true, "internal_host": "h1", "source_system": "orders-v1", "meta_version": 2, "created": 1_796_309_490_000i64}),
            serde_json::json!({"customer_id": "c2", "amount": 7.0, "qty": 1, "paid": false, "internal_host": "h2", "source_system": "orders-v1", "meta_version": 2, "created": 1_767_225_600_000i64}),
        ]
    );
}

/// A record a step fails on: with `tolerance: all` it is dead-lettered as
/// it came, with the step's index and type, and the others go on; with
/// `none` the pipeline stops naming the record's position and the step, and
/// what came before it is delivered.
#[test]
fn a_record_a_step_fails_on_with_both_tolerances() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(
        d.join("in/a.jsonl"),
        "{\"n\": \"1\"}\n{\"n\": \"two\"}\n{\"n\": \"3\"}\n",
    )
    .unwrap();
    let cast =
        "  - type: set\n    fields: {seen: true}\n  - type: cast\n    fields: {n: integer}\n";
    pipeline(d, "all", cast, "errors:\n  tolerance: all\n");
    let (status, log) = run_to_end(d, &["run", "--once", "all.yaml"], Duration::from_secs(30));
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/all.jsonl"));
    assert_eq!(
        out,
        vec![
            serde_json::json!({"n": 1, "seen": true}),
            serde_json::json!({"n": 3, "seen": true})
        ]
    );
    let dead = read_jsonl(&d.join("data/dlq/all.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "transform");
    assert_eq!(dead[0]["step"], 1);
    assert_eq!(dead[0]["step_type"], "cast");
    assert_eq!(dead[0]["error"], r#"n: "two" cannot be cast to integer"#);
    // As it came: before the set of step 0.
    assert_eq!(dead[0]["record"], serde_json::json!({"n": "two"}));
    // The position to resume after it: the end of its line.
    assert_eq!(dead[0]["position"]["offset"], 24);

    pipeline(d, "none", cast, "");
    let (status, log) = run_to_end(d, &["run", "--once", "none.yaml"], Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("transforms[1] (cast)") && log.contains("in/a.jsonl@24"),
        "{log}"
    );
    assert_eq!(read_jsonl(&d.join("out/none.jsonl")).len(), 1);
}

#[test]
fn validate_names_every_bad_step_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline(
        d,
        "bad",
        concat!(
            "  - type: rename\n    fields: {'a..b': c}\n",
            "  - type: upcase\n",
            "  - type: cast\n    fields: {n: number}\n",
            "  - type: timestamp\n    field: t\n    parse: iso\n",
            "  - type: drop\n    fields: [x]\n    extra: 1\n",
            "  - type: route\n    field: region\n",
        ),
        "",
    );
    let out = ferry_output(d, &["validate", "bad.yaml"]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for (line, what) in [
        (8, "transforms[0].fields.a..b"),
        (9, "transforms[1]"),
        // (An internally tagged step loses the place inside it.)
        (10, "transforms[2]: unknown variant `number`"),
        (14, "transforms[3].parse"),
        (17, "transforms[4].extra"),
        // The file sink writes one file: a route has nowhere to go.
        (
            18,
            "transforms[5]: a route step, but sink `file` writes to one destination only",
        ),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("bad.yaml:{line}:")) && l.contains(what)),
            "line {line}, {what}: {text}"
        );
    }
}

fn committed_len(d: &Path) -> u64 {
    fs::read(d.join("out/crash.jsonl.ferry-manifest"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|m| m["length"].as_u64())
        .unwrap_or(0)
}

/// 100,000 records through filter (keeping the even sequence numbers) +
/// remap + rename + set + cast + drop into the file sink, SIGKILL at 6
/// random moments: every kept record arrives once, in order, transformed,
/// and no filtered one ever appears.
#[test]
fn a_chain_keeps_exactly_once_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 50_000);
    write_test_input(&d.join("in/b.jsonl"), "b", 50_000);
    pipeline(
        d,
        "crash",
        concat!(
            "  - type: filter\n    if: mod(to_int!(.seq), 2) == 0\n",
            "  - type: remap\n    source: .double = to_int!(.seq) * 2\n",
            "  - type: rename\n    fields: {pad: padding}\n",
            "  - type: set\n    fields: {stage: t}\n",
            "  - type: cast\n    fields: {seq: integer}\n",
            "  - type: drop\n    fields: [padding]\n",
        ),
        "",
    );
    // Output lines are shorter than input lines: progress in output bytes.
    let total = 50_000u64 * r#"{"double":24690,"file":"a","seq":12345,"stage":"t"}"#.len() as u64;
    let mut interrupted = 0;
    for kill in 0..6 {
        kill9_mid_run(d, "crash.yaml", &[], || committed_len(d), total, (kill, 6));
        if committed_len(d) < total * 9 / 10 {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of 6 kills landed mid-run"
    );
    let (status, log) = run_to_end(
        d,
        &["run", "--once", "crash.yaml"],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/crash.jsonl"));
    for tag in ["a", "b"] {
        let seqs: Vec<u64> = out
            .iter()
            .filter(|r| r["file"] == tag)
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        let even: Vec<u64> = (0..50_000).step_by(2).collect();
        assert!(
            seqs == even,
            "{tag}: {} records, not each even number once in order",
            seqs.len()
        );
    }
    assert!(
        out.iter().all(|r| r["stage"] == "t"
            && r["double"] == r["seq"].as_u64().unwrap() * 2
            && r.get("pad").is_none()
            && r.get("padding").is_none()),
        "every record transformed"
    );
}

/// `filter` and `remap` run VRL: a dropped record is not written but its
/// position is committed (a second run reads nothing again); a program that
/// fails on a record fails that record; a program that does not compile is
/// refused at load with its line and column in the program.
#[test]
fn filter_and_remap_run_vrl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(
        d.join("in/a.jsonl"),
        concat!(
            r#"{"status": "ok", "qty": 3, "price": 400}"#,
            "\n",
            r#"{"status": "test", "qty": 1, "price": 1}"#,
            "\n",
            r#"{"status": "ok", "qty": "x", "price": 1}"#,
            "\n",
            r#"{"status": "ok", "qty": 1, "price": 5}"#,
            "\n",
        ),
    )
    .unwrap();
    pipeline(
        d,
        "vrl",
        concat!(
            "  - type: filter\n    if: '.status != \"test\"'\n",
            "  - type: remap\n    source: |\n      .total = to_float!(.qty) * to_float!(.price)\n      if .total > 1000.0 { .tier = \"large\" }\n",
        ),
        "errors:\n  tolerance: all\n",
    );
    let (status, log) = run_to_end(d, &["run", "--once", "vrl.yaml"], Duration::from_secs(30));
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/vrl.jsonl"));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0]["tier"], "large");
    assert_eq!(out[0]["total"], 1200.0);
    assert_eq!(out[1]["total"], 5.0);
    // The filtered record is counted on its own.
    assert!(
        log.contains("out 2 ") && log.contains("dead-lettered 1, filtered 1,"),
        "{log}"
    );
    let dead = read_jsonl(&d.join("data/dlq/vrl.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0]["step"].as_u64(), dead[0]["step_type"].as_str()),
        (Some(1), Some("remap"))
    );
    // Everything was committed, the dropped record too: nothing again.
    let (status, log) = run_to_end(d, &["run", "--once", "vrl.yaml"], Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert_eq!(read_jsonl(&d.join("out/vrl.jsonl")).len(), 2);

    pipeline(
        d,
        "broken",
        concat!(
            "  - type: remap\n    source: |\n      .a = 1\n      .total = .qty * .price\n",
            "  - type: filter\n    if: .qty +\n",
            "  - type: filter\n    if: .status\n",
        ),
        "",
    );
    let out = ferry_output(d, &["validate", "broken.yaml"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        text.contains("transforms[0].source: line 2, column") && text.contains("fallible"),
        "{text}"
    );
    assert!(text.contains("transforms[1].if: line 1, column"), "{text}");
    assert!(
        text.contains("transforms[2].if: the condition gives")
            && text.contains("not only true or false"),
        "{text}"
    );
}

/// Runs SQL against the test server (PG_URL; no server is a failure).
fn psql(sql: &str) -> String {
    psql_at(&pg_url(), sql)
}

/// A chain that filters, computes a field and routes on it into
/// PostgreSQL: two tables written in one transaction with the positions,
/// and a route to a table that does not exist, whose records are refused
/// into the dead-letter file. Killed with SIGKILL at random points and run
/// to the end: each kept record is in its table exactly once, filtered ones
/// nowhere.
#[test]
fn a_chain_routes_into_two_postgres_tables_exactly_once_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = format!("ferry_route_{}", fastrand::u32(..));
    for suffix in ["a", "b"] {
        psql(&format!(
            "CREATE TABLE {t}_{suffix} (file text NOT NULL, seq bigint NOT NULL, pad text, region text)"
        ));
    }
    const N: u64 = 60_000;
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", N);
    fs::write(
        d.join("pg.yaml"),
        format!(
            "name: {t}\nsource:\n  type: file\n  path: in/*.jsonl\ntransforms:\n\
             \x20 - type: filter\n    if: 'mod(int!(.seq), 7) != 3'\n\
             \x20 - type: remap\n    source: '.region = to_string(mod(int!(.seq), 3))'\n\
             \x20 - type: route\n    field: region\n    map: {{'0': {t}_a, '1': {t}_b}}\n    default: {t}_missing\n\
             sink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {t}_a\n\
             errors:\n  tolerance: all\n  dead_letter: dlq.jsonl\n\
             delivery:\n  batch_size: 2000\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
    let kept = |m: u64| (0..N).filter(|s| s % 7 != 3 && s % 3 == m).count() as u64;
    let rows = || {
        psql(&format!(
            "SELECT (SELECT count(*) FROM {t}_a) + (SELECT count(*) FROM {t}_b)"
        ))
        .parse::<u64>()
        .unwrap()
    };
    let env = [("PG_URL", pg_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let total = kept(0) + kept(1);
    for kill in 0..6 {
        kill9_mid_run(d, "pg.yaml", &env, rows, total, (kill, 6));
        eprintln!("kill {kill}: {} rows committed", rows());
    }
    let mut f = Ferry::start_with_env(d, &["run", "--once", "pg.yaml"], &env);
    let status = f.wait_for_exit(Duration::from_secs(180)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());

    for (m, suffix) in [(0, "a"), (1, "b")] {
        let expected = kept(m);
        assert_eq!(
            psql(&format!(
                "SELECT count(*), count(DISTINCT seq), count(*) FILTER (WHERE seq % 7 = 3 OR seq % 3 <> {m} OR region <> '{m}') FROM {t}_{suffix}"
            )),
            format!("{expected}|{expected}|0"),
            "table {t}_{suffix}: rows, distinct seqs, rows that belong elsewhere"
        );
    }
    // Refused: at least once each (dead letters are written before the
    // commit that a kill may cut off).
    let dlq = read_jsonl(&d.join("dlq.jsonl"));
    let mut refused: Vec<u64> = dlq
        .iter()
        .map(|l| l["record"]["seq"].as_u64().unwrap())
        .collect();
    refused.sort();
    refused.dedup();
    assert_eq!(refused.len() as u64, kept(2), "refused records");
    assert!(refused.iter().all(|s| s % 3 == 2 && s % 7 != 3));
    let first = &dlq[0];
    assert_eq!(first["stage"], "sink", "{first}");
    let error = first["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{t}_missing does not exist")),
        "{error}"
    );
    psql(&format!(
        "DROP TABLE {t}_a, {t}_b; DELETE FROM ferry_offsets WHERE pipeline = '{t}'"
    ));
}

/// `table: {field: …}` with upserts and `create_table`: each table is
/// created from its first records, keeps the last record of each key, and
/// takes updates in a later run (its staging table made again on a new
/// connection); a name that is no table name is refused.
#[test]
fn records_name_their_postgres_tables_for_upserts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = format!("ferry_named_{}", fastrand::u32(..));
    fs::create_dir_all(d.join("in")).unwrap();
    let line = |kind: &str, id: u32, v: &str| {
        format!("{{\"kind\": \"{kind}\", \"id\": {id}, \"v\": \"{v}\"}}\n")
    };
    let (x, y) = (format!("{t}_x"), format!("{t}_y"));
    let first: String = [
        line(&x, 1, "a"),
        line(&y, 1, "b"),
        line(&x, 1, "c"),
        line(&x, 2, "d"),
        line("no such-table!", 3, "e"),
    ]
    .concat();
    fs::write(d.join("in/1.jsonl"), first).unwrap();
    fs::write(
        d.join("pg.yaml"),
        format!(
            "name: {t}\nsource:\n  type: file\n  path: in/*.jsonl\n\
             sink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {{field: kind}}\n  mode: upsert\n  key: [id]\n  create_table: true\n\
             errors:\n  tolerance: all\n  dead_letter: dlq.jsonl\n"
        ),
    )
    .unwrap();
    let env = [("PG_URL", pg_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = || {
        let mut f = Ferry::start_with_env(d, &["run", "--once", "pg.yaml"], &env);
        let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
        assert!(status.success(), "{}", f.log_text());
    };
    run();
    let table = |name: &str| {
        psql(&format!(
            "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM {name}"
        ))
    };
    assert_eq!(table(&x), "1=c,2=d");
    assert_eq!(table(&y), "1=b");
    fs::write(
        d.join("in/2.jsonl"),
        [
            line(&y, 1, "f"),
            line(&x, 2, "g"),
            line(&y, 2, "h"),
            line(&y, 2, "i"),
        ]
        .concat(),
    )
    .unwrap();
    run();
    assert_eq!(table(&x), "1=c,2=g");
    assert_eq!(table(&y), "1=f,2=i");
    let dlq = read_jsonl(&d.join("dlq.jsonl"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let error = dlq[0]["error"].as_str().unwrap();
    assert!(
        error.contains("`no such-table!` is no table name"),
        "{error}"
    );
    psql(&format!(
        "DROP TABLE {x}, {y}; DELETE FROM ferry_offsets WHERE pipeline = '{t}'"
    ));
}

/// Upserts routed between the configured table and another, in batches so
/// small that tables switch within every transaction while the commit
/// before is in flight on the other connection (it hung: each transaction
/// waited on the other's row locks), keys repeated across batches and
/// tables; and routes to what is no place for records (a catalog, the
/// offsets table, a view) refused. Each table ends with the last record of
/// each of its keys.
#[test]
fn routed_upserts_switch_tables_without_waiting_on_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = format!("ferry_switch_{}", fastrand::u32(..));
    for suffix in ["a", "b"] {
        psql(&format!(
            "CREATE TABLE {t}_{suffix} (id int PRIMARY KEY, v int, dest text)"
        ));
    }
    psql(&format!("CREATE VIEW {t}_view AS SELECT * FROM {t}_a"));
    fs::create_dir_all(d.join("in")).unwrap();
    const N: u32 = 6000;
    let dest = |i: u32| match i {
        100 => "pg_catalog.pg_namespace".to_string(),
        200 => "ferry_offsets".to_string(),
        300 => format!("{t}_view"),
        i if i % 3 == 0 => format!("public.{t}_a"),
        _ => format!("{t}_b"),
    };
    let lines: String = (0..N)
        .map(|i| {
            format!(
                "{{\"id\": {}, \"v\": {i}, \"dest\": \"{}\"}}\n",
                i % 37,
                dest(i)
            )
        })
        .collect();
    fs::write(d.join("in/a.jsonl"), lines).unwrap();
    fs::write(
        d.join("pg.yaml"),
        format!(
            "name: {t}\nsource:\n  type: file\n  path: in/*.jsonl\ntransforms:\n  - type: route\n    field: dest\n\
             sink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: {t}_a\n  mode: upsert\n  key: [id]\n\
             errors:\n  tolerance: all\n  dead_letter: dlq.jsonl\ndelivery:\n  batch_size: 50\n"
        ),
    )
    .unwrap();
    let env = [("PG_URL", pg_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut f = Ferry::start_with_env(d, &["run", "--once", "pg.yaml"], &env);
    let status = f.wait_for_exit(Duration::from_secs(120)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());
    for (m, suffix) in [(0, "a"), (1, "b")] {
        let mut last = std::collections::BTreeMap::new();
        for i in (0..N).filter(|&i| ![100, 200, 300].contains(&i)) {
            if (m == 0) == (i % 3 == 0) {
                last.insert(i % 37, i);
            }
        }
        let expected: Vec<String> = last.iter().map(|(id, v)| format!("{id}={v}")).collect();
        assert_eq!(
            psql(&format!(
                "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM {t}_{suffix}"
            )),
            expected.join(","),
            "table {t}_{suffix}"
        );
    }
    let dlq = read_jsonl(&d.join("dlq.jsonl"));
    let refused: Vec<(u64, &str)> = dlq
        .iter()
        .map(|l| {
            (
                l["record"]["v"].as_u64().unwrap(),
                l["error"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[0].1.contains("system schema"), "{refused:?}");
    assert!(refused[1].1.contains("the offsets table"), "{refused:?}");
    assert!(refused[2].1.contains("is a view"), "{refused:?}");
    psql(&format!(
        "DROP VIEW {t}_view; DROP TABLE {t}_a, {t}_b; DELETE FROM ferry_offsets WHERE pipeline = '{t}'"
    ));
}

/// The destinations a route names are checked against the sink's own rules
/// when the file is loaded, each at its place.
#[test]
fn validate_checks_routed_names_against_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, sink, bad, default) in [
        (
            "pg",
            "  type: postgres\n  url: postgres://x@127.0.0.1/db\n  table: orders\n",
            "bad name!",
            "pg_catalog.pg_class",
        ),
        (
            "mongo",
            "  type: mongodb\n  uri: mongodb://127.0.0.1\n  database: db\n  collection: items\n",
            "system.users",
            "a$b",
        ),
        (
            "es",
            "  type: elasticsearch\n  urls: [http://127.0.0.1:9200]\n  index: logs\n",
            "Upper",
            "_hidden",
        ),
        (
            "kafka",
            "  type: kafka\n  brokers: 127.0.0.1:9092\n  topic: t\n",
            "a topic",
            "é",
        ),
    ] {
        fs::write(
            d.join(format!("{name}.yaml")),
            format!(
                "name: {name}\nsource:\n  type: file\n  path: in.jsonl\ntransforms:\n  - type: route\n    field: r\n    map: {{ok: fine, no: '{bad}'}}\n    default: '{default}'\nsink:\n{sink}"
            ),
        )
        .unwrap();
        let out = ferry_output(d, &["validate", &format!("{name}.yaml")]);
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{name}: {text}");
        assert!(
            text.contains(&format!("{name}.yaml:8:")) && text.contains("transforms[0].map.no"),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!("{name}.yaml:9:")) && text.contains("transforms[0].default"),
            "{name}: {text}"
        );
        assert!(!text.contains("map.ok"), "{name}: {text}");
    }
}
