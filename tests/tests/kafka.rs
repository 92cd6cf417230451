//! Kafka source and sink against a real Kafka-protocol broker (Tansu, which
//! `scripts/services` installs and starts on 127.0.0.1:19092; KAFKA_BROKERS
//! overrides). No broker is a failure, not a skip.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ferry_tests::*;

/// A fresh topic name per test: tests run in any order, on one broker.
fn topic(what: &str) -> String {
    format!("ferry_{what}_{}", fastrand::u32(..))
}

/// Consumer options that make a killed member's partitions move on within
/// seconds (Tansu's group protocol waits out the session of a dead member).
const FAST_GROUP: &str =
    "  options:\n    session.timeout.ms: 3000\n    heartbeat.interval.ms: 500\n";

/// Starts ferry in `d` with KAFKA_BROKERS set.
fn start(d: &Path, args: &[&str]) -> Ferry {
    Ferry::start_with_env(d, args, &[("KAFKA_BROKERS", &kafka_brokers())])
}

/// Runs `generate → kafka` to the end: `count` records `{"file": tag, "seq": n}`.
fn produce(d: &Path, topic: &str, tag: &str, count: u64) {
    let name = format!("produce-{topic}");
    fs::write(
        d.join(format!("{name}.yaml")),
        format!(
            "name: {name}\nsource:\n  type: generate\n  count: {count}\n  template: {{\"file\": \"{tag}\", \"seq\": \"{{{{seq}}}}\"}}\nsink:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topic: {topic}\n  key: seq\n"
        ),
    )
    .unwrap();
    let mut f = start(d, &["run", "--once", &format!("{name}.yaml")]);
    let status = f.wait_for_exit(Duration::from_secs(120)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());
}

/// The sum of the next offsets the file sink's manifest holds: the number
/// of messages committed when every partition starts at 0.
fn committed_offsets(manifest: &Path) -> u64 {
    let Ok(text) = fs::read_to_string(manifest) else {
        return 0;
    };
    let m: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    m["positions"].as_object().map_or(0, |ps| {
        ps.values().filter_map(|p| p["offset"].as_u64()).sum()
    })
}

/// Records in the crash tests' topic.
const CRASH_RECORDS: u64 = 100_000;

/// Consumes `topic` into `sink` (a `sink:` section) with ferry SIGKILLed 8
/// times at random points of `progress()`, then runs it again until
/// `done()` (and half a second more: anything extra would show as a
/// duplicate) and stops it with SIGTERM.
fn consume_across_kills(
    d: &Path,
    topic: &str,
    sink: &str,
    progress: impl Fn() -> u64,
    done: impl Fn() -> bool,
) {
    fs::write(
        d.join("consume.yaml"),
        format!(
            "name: consume-{topic}\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [{topic}]\n{FAST_GROUP}{sink}delivery:\n  batch_size: 2000\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
    let brokers = kafka_brokers();
    for kill in 0..8 {
        kill9_mid_run(
            d,
            "consume.yaml",
            &[("KAFKA_BROKERS", &brokers)],
            &progress,
            CRASH_RECORDS,
            (kill, 8),
        );
        eprintln!("kill {kill}: progress {}", progress());
    }
    let mut f = start(d, &["run", "consume.yaml"]);
    let finished = wait_until(Duration::from_secs(120), &done);
    std::thread::sleep(Duration::from_millis(500));
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    assert!(finished, "never committed everything: {}", f.log_text());
}

/// generate → Kafka (100,000 records), then Kafka → file with ferry killed
/// 8 times: the file sink keeps the positions, the source starts each
/// partition at the further of the group's offset and the sink's, so the
/// file holds every record exactly once.
#[test]
fn kafka_to_file_exactly_once_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topic = topic("crash");
    produce(d, &topic, "k", CRASH_RECORDS);
    let out = d.join("out.jsonl");
    // Done when the sink's manifest says every offset is committed (the
    // output's line count is no measure: a restart first cuts the
    // uncommitted tail a killed run left).
    consume_across_kills(
        d,
        &topic,
        "sink:\n  type: file\n  path: out.jsonl\n",
        || count_lines(&out) as u64,
        || committed_offsets(&d.join("out.jsonl.ferry-manifest")) >= CRASH_RECORDS,
    );
    let problems = check_each_once(&read_jsonl(&out), &[("k", CRASH_RECORDS)]);
    assert!(problems.is_empty(), "{problems:?}");
}

/// The same into PostgreSQL, with no key on the table: only the positions
/// committed in the rows' transaction keep a replay from inserting twice.
#[test]
fn kafka_to_postgres_exactly_once_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topic = topic("pg");
    let url = pg_url();
    let table = format!("ferry_kafka_{}", fastrand::u32(..));
    psql_at(
        &url,
        &format!("CREATE TABLE {table} (file text NOT NULL, seq bigint NOT NULL)"),
    );
    produce(d, &topic, "k", CRASH_RECORDS);
    let rows = || {
        psql_at(&url, &format!("SELECT count(*) FROM {table}"))
            .parse::<u64>()
            .unwrap()
    };
    consume_across_kills(
        d,
        &topic,
        &format!("sink:\n  type: postgres\n  url: {url}\n  table: {table}\n"),
        rows,
        || rows() >= CRASH_RECORDS,
    );
    let summary = psql_at(
        &url,
        &format!(
            "SELECT file || ':' || count(*) || ':' || count(DISTINCT seq) || ':' || min(seq) || ':' || max(seq) \
             FROM {table} GROUP BY file"
        ),
    );
    assert_eq!(
        summary, "k:100000:100000:0:99999",
        "rows: file:count:distinct:min:max"
    );
    psql_at(
        &url,
        &format!(
            "DROP TABLE {table}; DELETE FROM ferry_offsets WHERE pipeline = 'consume-{topic}'"
        ),
    );
}

/// Messages that are not JSON: with `tolerance: all` they go to the
/// dead-letter file (with their position) and the others arrive; with
/// `tolerance: none` the pipeline stops, naming the message's position.
#[test]
fn malformed_json_messages_with_both_tolerances() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topic = topic("bad");
    fs::create_dir_all(d.join("in")).unwrap();
    let mut lines = String::new();
    for i in 0..300 {
        if i % 100 == 50 {
            lines.push_str(&format!("not json {i}\n"));
        } else {
            lines.push_str(&format!("{{\"file\":\"g\",\"seq\":{i}}}\n"));
        }
    }
    fs::write(d.join("in/lines.txt"), lines).unwrap();
    // Raw lines into the topic: a text file source and a text Kafka sink.
    fs::write(
        d.join("raw.yaml"),
        format!(
            "name: raw\nsource:\n  type: file\n  path: in/lines.txt\n  format: text\nsink:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topic: {topic}\n  format: text\n"
        ),
    )
    .unwrap();
    let mut f = start(d, &["run", "--once", "raw.yaml"]);
    assert!(
        f.wait_for_exit(Duration::from_secs(60))
            .expect("ends")
            .success(),
        "{}",
        f.log_text()
    );

    for tolerance in ["all", "none"] {
        fs::write(
            d.join(format!("{tolerance}.yaml")),
            format!(
                "name: bad-{tolerance}\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [{topic}]\n{FAST_GROUP}sink:\n  type: file\n  path: out-{tolerance}.jsonl\nerrors:\n  tolerance: {tolerance}\n"
            ),
        )
        .unwrap();
    }
    let mut f = start(d, &["run", "all.yaml"]);
    let out = d.join("out-all.jsonl");
    let arrived = wait_until(Duration::from_secs(60), || count_lines(&out) >= 297);
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    assert!(arrived, "{}", f.log_text());
    let good: Vec<u64> = read_jsonl(&out)
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(good.len(), 297);
    let dead = read_jsonl(&d.join("data/dlq/bad-all.jsonl"));
    assert_eq!(dead.len(), 3, "{dead:?}");
    let mut raws: Vec<String> = dead
        .iter()
        .map(|r| r["raw"].as_str().unwrap().to_string())
        .collect();
    raws.sort();
    assert_eq!(raws, ["not json 150", "not json 250", "not json 50"]);
    for r in &dead {
        let position = r.to_string();
        assert!(
            position.contains(&topic),
            "dead letter without its position: {r}"
        );
    }

    let mut f = start(d, &["run", "none.yaml"]);
    let status = f
        .wait_for_exit(Duration::from_secs(60))
        .expect("stops by itself");
    assert_eq!(status.code(), Some(1), "{}", f.log_text());
    let log = f.log_text();
    assert!(
        log.contains("bad record at")
            && log.contains(&format!("{topic}/"))
            && log.contains("not JSON"),
        "{log}"
    );
}
