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
