//! Kafka source and sink against a real Kafka-protocol broker (Tansu, which
//! `scripts/services` installs and starts on 127.0.0.1:19092; KAFKA_BROKERS
//! overrides). No broker is a failure, not a skip.

use std::collections::HashMap;
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

/// Messages committed by a group whose members write side by side into
/// `dir`: per partition the furthest offset any member's manifest holds,
/// summed.
fn group_committed(dir: &Path) -> u64 {
    let mut furthest: HashMap<String, u64> = HashMap::new();
    let entries = |dir: &Path| {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    // Manifests in `dir` and in its subdirectories.
    let mut paths = entries(dir);
    for sub in paths.clone().iter().filter(|p| p.is_dir()) {
        paths.extend(entries(sub));
    }
    for path in paths {
        if !path.to_string_lossy().ends_with(".ferry-manifest") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        for (key, p) in m["positions"].as_object().into_iter().flatten() {
            let n = p["offset"].as_u64().unwrap_or(0);
            let known = furthest.entry(key.clone()).or_default();
            *known = (*known).max(n);
        }
    }
    furthest.values().sum()
}

/// Writes `consume` as the pipeline of members `a` and `b` (each in its
/// own folder of `d`, `${MEMBER}` set to its name); the result starts one.
fn group_members(d: &Path, consume: &str) -> impl Fn(&str) -> Ferry {
    for member in ["a", "b"] {
        fs::create_dir_all(d.join(member)).unwrap();
        fs::write(d.join(member).join("consume.yaml"), consume).unwrap();
    }
    let (d, brokers) = (d.to_path_buf(), kafka_brokers());
    move |m: &str| {
        Ferry::start_with_env(
            &d.join(m),
            &["run", "consume.yaml"],
            &[("KAFKA_BROKERS", &brokers), ("MEMBER", m)],
        )
    }
}

/// How many times each of `0..count` appears as `seq` in a JSON-lines
/// file, and how many of its lines are not records.
fn seq_counts(path: &Path, count: u64) -> (Vec<u32>, usize) {
    let mut seen = vec![0u32; count as usize];
    let mut bad = 0;
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        match serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["seq"].as_u64())
        {
            Some(n) if n < count => seen[n as usize] += 1,
            _ => bad += 1,
        }
    }
    (seen, bad)
}

/// Records in the crash tests' topic.
const CRASH_RECORDS: u64 = 100_000;

/// Consumes `topic` into `sink` (a `sink:` section) with ferry SIGKILLed
/// `kills` times at random points of `progress()` (out of `total`), then runs
/// it again until `done()` (and half a second more: anything extra would show
/// as a duplicate) and stops it with SIGTERM.
fn consume_across_kills(
    d: &Path,
    topic: &str,
    sink: &str,
    (total, kills): (u64, u64),
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
    for kill in 0..kills {
        kill9_mid_run(
            d,
            "consume.yaml",
            &[("KAFKA_BROKERS", &brokers)],
            &progress,
            total,
            (kill, kills),
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
        (CRASH_RECORDS, 8),
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
        (CRASH_RECORDS, 8),
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

/// The same into MongoDB with ids from the records' positions
/// (`topic/partition@offset`): a replay overwrites, so the collection ends
/// with exactly one document per message.
#[test]
fn kafka_to_mongodb_exactly_once_across_sigkill() {
    use mongodb::bson::{Document, doc};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topic = topic("mongo");
    let db = format!("ferry_kafka_{}", fastrand::u32(..));
    produce(d, &topic, "k", CRASH_RECORDS);
    let documents = || {
        with_mongodb(async |c| {
            c.database(&db)
                .collection::<Document>("records")
                .count_documents(doc! {})
                .await
                .expect("count")
        })
    };
    consume_across_kills(
        d,
        &topic,
        &format!(
            "sink:\n  type: mongodb\n  uri: {}\n  database: {db}\n  collection: records\n",
            mongodb_uri()
        ),
        (CRASH_RECORDS, 8),
        documents,
        || documents() >= CRASH_RECORDS,
    );
    let (count, distinct) = with_mongodb(async |c| {
        let coll = c.database(&db).collection::<Document>("records");
        let count = coll.count_documents(doc! {}).await.expect("count");
        let distinct = coll.distinct("seq", doc! {}).await.expect("distinct").len();
        c.database(&db).drop().await.expect("drop");
        (count, distinct as u64)
    });
    assert_eq!(
        (count, distinct),
        (CRASH_RECORDS, CRASH_RECORDS),
        "documents, distinct seq"
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

    let mut f = start(d, &["run", "--no-watch", "none.yaml"]);
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

/// Distributed mode: two daemons run the same pipeline (same group) on a
/// 6-partition topic while a producer keeps writing; one is SIGKILLed and
/// restarted, then the other is stopped and restarted. Each writes its own
/// file side by side (`out-${MEMBER}.jsonl`). Partitions move on every
/// change: the revoking member flushes its sink and commits before giving
/// them up, and a member receiving a partition starts after the furthest
/// manifest of the group (the killed one had no chance to commit to the
/// group). Together the two files hold every record exactly once.
#[test]
fn two_daemons_in_one_group_share_a_topic_exactly_once() {
    const N: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topic = topic("group");
    let brokers = kafka_brokers();
    create_topic(&brokers, &topic, 6);
    fs::write(
        d.join("produce.yaml"),
        format!(
            "name: produce\nsource:\n  type: generate\n  count: {N}\n  rate: 3000\n  template: {{\"file\": \"g\", \"seq\": \"{{{{seq}}}}\"}}\nsink:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topic: {topic}\n  key: seq\n"
        ),
    )
    .unwrap();
    let out = d.join("out");
    let consume = format!(
        "name: consume-{topic}\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [{topic}]\n{FAST_GROUP}sink:\n  type: file\n  path: {}/out-${{MEMBER}}.jsonl\ndelivery:\n  batch_size: 2000\n  flush_interval: 100ms\n",
        out.display()
    );
    let member = group_members(d, &consume);
    let mut producer = start(d, &["run", "--once", "produce.yaml"]);
    let mut a = member("a");
    let mut b = member("b");
    let progress = || group_committed(&out);

    let mark = fastrand::u64(N / 8..N / 4);
    assert!(
        wait_until(Duration::from_secs(120), || progress() >= mark),
        "never reached {mark}: {}\n{}",
        a.log_text(),
        b.log_text()
    );
    a.kill9();
    eprintln!("a killed at {}", progress());
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..2000)));
    let mut a = member("a");

    let mark = fastrand::u64(N / 2..N * 3 / 4);
    assert!(
        wait_until(Duration::from_secs(120), || progress() >= mark),
        "never reached {mark}: {}\n{}",
        a.log_text(),
        b.log_text()
    );
    b.signal(libc::SIGTERM);
    b.wait_for_exit(Duration::from_secs(60)).expect("b stops");
    eprintln!("b stopped at {}", progress());
    let b_first_log = b.log_text();
    let mut b = member("b");

    let status = producer
        .wait_for_exit(Duration::from_secs(120))
        .expect("producer finishes");
    assert!(status.success(), "{}", producer.log_text());
    let finished = wait_until(Duration::from_secs(120), || progress() >= N);
    std::thread::sleep(Duration::from_millis(500));
    for f in [&mut a, &mut b] {
        f.signal(libc::SIGTERM);
        f.wait_for_exit(Duration::from_secs(60)).expect("stops");
    }
    assert!(
        finished,
        "committed {} of {N}:\n{}\n{}",
        progress(),
        a.log_text(),
        b.log_text()
    );
    let from_a = read_jsonl(&out.join("out-a.jsonl"));
    let from_b = read_jsonl(&out.join("out-b.jsonl"));
    eprintln!("a wrote {}, b wrote {}", from_a.len(), from_b.len());
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both members took part"
    );
    assert!(
        b_first_log.contains("partitions revoked") || a.log_text().contains("partitions revoked"),
        "no partition ever moved"
    );
    let all: Vec<_> = from_a.into_iter().chain(from_b).collect();
    let problems = check_each_once(&all, &[("g", N)]);
    assert!(problems.is_empty(), "{problems:?}");
}

/// Partitions move while a member is behind: its polling thread holds
/// chunks read ahead of the runtime when a second member joins (some
/// partitions are revoked from the first) and when the first leaves (all go
/// to the second). What was read ahead of a revoked partition is dropped
/// and read again by its new owner; what was handed over is flushed and
/// committed before the partition goes: every record exactly once.
#[test]
fn partitions_move_while_a_backlog_is_read_ahead() {
    const N: u64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topic = topic("backlog");
    let brokers = kafka_brokers();
    create_topic(&brokers, &topic, 6);
    produce_test_lines(&brokers, &topic, N, None);
    let out = d.join("out");
    // Small batches, each made durable by an fsync: the sink is the slow
    // side, so the source is always ahead of it. Each member writes in a
    // directory of its own, so neither sees the other's manifest: the
    // group's committed offsets alone hand partitions over, and a record
    // the old owner writes after the handover would be there twice.
    let consume = format!(
        "name: consume-{topic}\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [{topic}]\n{FAST_GROUP}sink:\n  type: file\n  path: {}/${{MEMBER}}/out.jsonl\ndelivery:\n  batch_size: 200\n  flush_interval: 50ms\n",
        out.display()
    );
    for member in ["a", "b"] {
        fs::create_dir_all(out.join(member)).unwrap();
    }
    let member = group_members(d, &consume);
    let progress = || group_committed(&out);
    let mut a = member("a");
    // b asks to join as soon as a reads: joining takes seconds, in which a
    // reads on at full speed, far ahead of its sink.
    assert!(
        wait_until(Duration::from_secs(60), || a
            .log_text()
            .contains("partition assigned")),
        "a never got a partition: {}",
        a.log_text()
    );
    let mut b = member("b");
    let joined = wait_until(Duration::from_secs(60), || {
        b.log_text().contains("partition assigned")
    });
    assert!(joined, "b never got a partition: {}", b.log_text());
    let at_join = progress();
    let mark = (at_join + N / 10).min(N * 3 / 4);
    assert!(
        wait_until(Duration::from_secs(120), || progress() >= mark),
        "never reached {mark}"
    );
    let at_leave = progress();
    a.signal(libc::SIGTERM);
    a.wait_for_exit(Duration::from_secs(60)).expect("a stops");
    let finished = wait_until(Duration::from_secs(180), || progress() >= N);
    std::thread::sleep(Duration::from_millis(500));
    b.signal(libc::SIGTERM);
    b.wait_for_exit(Duration::from_secs(60)).expect("b stops");
    eprintln!("b joined at {at_join}, a was told to leave at {at_leave} of {N}");
    assert!(
        finished,
        "committed {} of {N}:\n{}\n{}",
        progress(),
        a.log_text(),
        b.log_text()
    );
    assert!(
        at_join < N && at_leave < N,
        "the partitions moved only after everything was read"
    );
    assert!(
        a.log_text().contains("partitions revoked"),
        "{}",
        a.log_text()
    );
    let all: Vec<_> = read_jsonl(&out.join("a/out.jsonl"))
        .into_iter()
        .chain(read_jsonl(&out.join("b/out.jsonl")))
        .collect();
    let problems = check_each_once(&all, &[("bench", N)]);
    assert!(problems.is_empty(), "{problems:?}");
}

/// The at-least-once path: a file sink without its manifest
/// (`transactional: false`) keeps no positions, so they live in ferry's
/// offset store, written after the sink's fsync. Killed 3 times, nothing is
/// lost; records written after the last commit may arrive twice.
#[test]
fn kafka_to_non_transactional_file_loses_nothing_across_sigkill() {
    const N: u64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topic = topic("alo");
    produce(d, &topic, "k", N);
    let out = d.join("out.jsonl");
    consume_across_kills(
        d,
        &topic,
        "sink:\n  type: file\n  path: out.jsonl\n  transactional: false\n",
        (N, 3),
        || count_lines(&out) as u64,
        || seq_counts(&out, N).0.iter().all(|&c| c > 0),
    );
    let (seen, bad) = seq_counts(&out, N);
    let missing = seen.iter().filter(|&&c| c == 0).count();
    let twice = seen.iter().filter(|&&c| c > 1).count();
    eprintln!("{N} records: {missing} missing, {twice} more than once, {bad} other lines");
    assert_eq!(missing, 0, "records lost");
    assert_eq!(bad, 0, "lines that are not records");
}

/// librdkafka's mock cluster (in this test process, on a real localhost
/// port) stands in for a broker that can be taken down and brought back
/// with its data. Two pipelines run through it: generate → Kafka (the
/// producer side) and Kafka → file. The broker is down when ferry starts
/// and goes down again mid-run; ferry reports the broker errors, keeps
/// trying, and carries on when it is back: nothing lost, and the file holds
/// each message of the topic once.
#[test]
fn broker_down_at_start_and_mid_run() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    const N: u64 = 20_000;
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 3, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("pipelines")).unwrap();
    fs::write(
        d.join("pipelines/produce.yaml"),
        format!(
            "name: produce\nsource:\n  type: generate\n  count: {N}\n  rate: 2000\n  template: {{\"file\": \"m\", \"seq\": \"{{{{seq}}}}\"}}\nsink:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topic: events\n  key: seq\n"
        ),
    )
    .unwrap();
    fs::write(
        d.join("pipelines/consume.yaml"),
        format!(
            "name: consume\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [events]\n{FAST_GROUP}sink:\n  type: file\n  path: out.jsonl\ndelivery:\n  batch_size: 1000\n  flush_interval: 100ms\nerrors:\n  retry_backoff: 200ms\n  retry_backoff_max: 2s\n"
        ),
    )
    .unwrap();
    let out = d.join("out.jsonl");
    let manifest = d.join("out.jsonl.ferry-manifest");

    mock.broker_down(1).unwrap();
    let mut f = Ferry::start_with_env(d, &["run", "pipelines"], &[("KAFKA_BROKERS", &brokers)]);
    let reported = wait_until(Duration::from_secs(30), || {
        let log = f.log_text();
        log.contains("Connection refused") || log.contains("Connect to")
    });
    assert!(reported, "no broker error reported:\n{}", f.log_text());
    assert_eq!(count_lines(&out), 0);
    mock.broker_up(1).unwrap();

    let mark = fastrand::u64(N / 4..N / 2);
    assert!(
        wait_until(Duration::from_secs(60), || count_lines(&out) as u64 >= mark),
        "never reached {mark} after the broker came up:\n{}",
        f.log_text()
    );
    mock.broker_down(1).unwrap();
    let errors_before = f.log_text().matches("kafka:").count();
    // Repeats of one broker error are logged every 10 s at most.
    let reported = wait_until(Duration::from_secs(20), || {
        f.log_text().matches("kafka:").count() > errors_before
    });
    std::thread::sleep(Duration::from_secs(1));
    let during = count_lines(&out);
    assert!(
        reported,
        "the outage mid-run was not reported:\n{}",
        f.log_text()
    );
    mock.broker_up(1).unwrap();
    eprintln!("broker down mid-run at {mark}+, {during} lines when it came back");

    let all_there = wait_until(Duration::from_secs(120), || {
        seq_counts(&out, N).0.iter().all(|&c| c > 0)
    });
    assert!(all_there, "not every record arrived:\n{}", f.log_text());
    // Every message the topic holds (the producer side is at-least-once:
    // a retried produce may have written one twice) is in the file once.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let in_topic = || -> u64 {
        (0..3)
            .map(|p| {
                let (lo, hi) = consumer
                    .fetch_watermarks("events", p, Duration::from_secs(10))
                    .expect("watermarks");
                (hi - lo) as u64
            })
            .sum()
    };
    let committed = || committed_offsets(&manifest);
    assert!(
        wait_until(Duration::from_secs(60), || committed() == in_topic()),
        "committed {} of {} messages:\n{}",
        committed(),
        in_topic(),
        f.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    let (seen, bad) = seq_counts(&out, N);
    let lines = seen.iter().map(|&c| u64::from(c)).sum::<u64>() + bad as u64;
    assert_eq!(bad, 0);
    assert!(seen.iter().all(|&c| c > 0), "records lost");
    assert_eq!(
        lines,
        in_topic(),
        "the file holds each message of the topic exactly once"
    );
}

/// Deleting a topic under a running consumer: librdkafka 2.12 dereferences
/// a missing topic name when Tansu's fetch answer carries leader tags for it
/// (SIGSEGV in `rd_kafka_metadata_update_op`, the whole daemon gone with
/// it). Now the Kafka pipeline reports the missing topic and waits for it,
/// and a generator pipeline in the same daemon carries on.
#[test]
fn a_deleted_topic_is_an_error_of_its_pipeline_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = topic("deleted");
    let brokers = kafka_brokers();
    create_topic(&brokers, &t, 1);
    produce(d, &t, "k", 100);
    fs::create_dir_all(d.join("pipelines")).unwrap();
    fs::write(
        d.join("pipelines/consume.yaml"),
        format!(
            "name: consume\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [{t}]\n{FAST_GROUP}sink:\n  type: file\n  path: out.jsonl\ndelivery:\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
    fs::write(
        d.join("pipelines/tick.yaml"),
        "name: tick\nsource:\n  type: generate\n  rate: 200\n  template: {\"seq\": \"{{seq}}\"}\nsink:\n  type: file\n  path: ticks.jsonl\ndelivery:\n  flush_interval: 100ms\n",
    )
    .unwrap();
    let mut f = start(d, &["run", "pipelines"]);
    assert!(
        wait_until(Duration::from_secs(60), || count_lines(
            &d.join("out.jsonl")
        ) == 100),
        "not consumed:\n{}",
        f.log_text()
    );
    delete_topic(&brokers, &t);
    let ticks = count_lines(&d.join("ticks.jsonl"));
    // Tansu answers fetches of a deleted topic with leader tags within a
    // second or two; the crash came within 10 s in every run before.
    let exited = f.wait_for_exit(Duration::from_secs(15));
    assert!(
        exited.is_none(),
        "ferry exited ({exited:?}) after the topic was deleted:\n{}",
        f.log_text()
    );
    assert!(
        count_lines(&d.join("ticks.jsonl")) > ticks + 1000,
        "the generator pipeline stopped:\n{}",
        f.log_text()
    );
    eprintln!("{}", f.log_text());
    f.signal(libc::SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    assert!(status.success(), "{}", f.log_text());
}

/// The last progress line of `pipeline` in `log`: its `retries` count.
fn retries_of(log: &str, pipeline: &str) -> Option<u64> {
    let line = log
        .lines()
        .rfind(|l| l.contains(&format!(" {pipeline}: in ")))?;
    let n = line.split("retries ").nth(1)?.split(',').next()?;
    n.trim().parse().ok()
}

/// Whether each of `pipelines` logged a warning naming it.
fn warned_by_each(f: &Ferry, pipelines: &[&str]) -> bool {
    let log = f.log_text();
    pipelines.iter().all(|p| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&format!("pipeline={p}")))
    })
}

/// SIGTERM, and every pipeline stopped by itself within the shutdown
/// timeout (exit 0; an abandoned one makes it 1).
fn stops_cleanly(f: &mut Ferry) {
    f.signal(libc::SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    assert!(
        status.success(),
        "not stopped within the shutdown timeout ({status:?}):\n{}",
        f.log_text()
    );
}

/// Brokers that nothing answers at: both Kafka pipelines say so at once and
/// then at most once per 10 s per kind of trouble (before: the sink said
/// nothing for 43 s, the source logged ~40 lines a second after claiming it
/// had joined its group), count librdkafka's attempts in `retries`, and stop
/// on SIGTERM well within the shutdown timeout (the sink waited for its
/// deliveries until a second signal).
#[test]
fn unreachable_brokers_are_reported_counted_and_do_not_hold_up_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A port nothing listens on.
    let brokers = format!("127.0.0.1:{}", free_port());
    fs::create_dir_all(d.join("pipelines")).unwrap();
    fs::write(
        d.join("pipelines/produce.yaml"),
        format!(
            "name: produce\nsource:\n  type: generate\n  count: 100\n  template: {{\"seq\": \"{{{{seq}}}}\"}}\nsink:\n  type: kafka\n  brokers: {brokers}\n  topic: t\n"
        ),
    )
    .unwrap();
    fs::write(
        d.join("pipelines/consume.yaml"),
        format!(
            "name: consume\nsource:\n  type: kafka\n  brokers: {brokers}\n  topics: [t]\nsink:\n  type: file\n  path: out.jsonl\n"
        ),
    )
    .unwrap();
    let mut f = Ferry::start(d, &["run", "--shutdown-timeout", "15s", "pipelines"]);
    let both_reported = wait_until(Duration::from_secs(10), || {
        warned_by_each(&f, &["produce", "consume"])
    });
    assert!(
        both_reported,
        "not reported by both pipelines:\n{}",
        f.log_text()
    );
    std::thread::sleep(Duration::from_secs(12));
    let log = f.log_text();
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    // A few kinds of trouble per client, each at most twice in 12 s.
    assert!(warnings <= 16, "{warnings} warnings in 12 s:\n{log}");
    assert!(!log.contains("joined the group"), "{log}");
    for p in ["produce", "consume"] {
        assert!(
            retries_of(&log, p).is_some_and(|n| n > 0),
            "{p}: no retries counted:\n{log}"
        );
    }
    stops_cleanly(&mut f);
}

/// The broker dies under a running producer and consumer: both report it,
/// and SIGTERM stops both well within the shutdown timeout (the consumer's
/// commit of its revoked partitions waited 45 s for the coordinator).
#[test]
fn a_broker_that_dies_does_not_hold_up_a_stop() {
    use rdkafka::mocking::MockCluster;
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("pipelines")).unwrap();
    fs::write(
        d.join("pipelines/produce.yaml"),
        "name: produce\nsource:\n  type: generate\n  rate: 500\n  template: {\"seq\": \"{{seq}}\"}\nsink:\n  type: kafka\n  brokers: ${KAFKA_BROKERS}\n  topic: events\n",
    )
    .unwrap();
    // librdkafka's default session timeout (45 s): a commit waiting for the
    // coordinator held the consumer's close that long.
    fs::write(
        d.join("pipelines/consume.yaml"),
        "name: consume\nsource:\n  type: kafka\n  brokers: ${KAFKA_BROKERS}\n  topics: [events]\nsink:\n  type: file\n  path: out.jsonl\ndelivery:\n  flush_interval: 100ms\n",
    )
    .unwrap();
    let mut f = Ferry::start_with_env(
        d,
        &["run", "--shutdown-timeout", "25s", "pipelines"],
        &[("KAFKA_BROKERS", &brokers)],
    );
    assert!(
        wait_until(Duration::from_secs(60), || count_lines(
            &d.join("out.jsonl")
        ) >= 500),
        "not flowing:\n{}",
        f.log_text()
    );
    mock.broker_down(1).unwrap();
    let reported = wait_until(Duration::from_secs(15), || {
        warned_by_each(&f, &["produce", "consume"])
    });
    assert!(
        reported,
        "the dead broker was not reported by both:\n{}",
        f.log_text()
    );
    stops_cleanly(&mut f);
}

/// `security.protocol: ssl` to a broker behind TLS: a Tansu of the test's
/// own behind socat (Tansu's own TLS listener did not answer a handshake
/// here), advertising the TLS port, so that every connection — bootstrap,
/// producer, group coordinator, fetches — is TLS. Both connectors move
/// 1,000 records through it with the test's CA; without the CA the
/// certificate is refused, reported, and retried, and ferry still stops on
/// SIGTERM. SASL (PLAIN, SCRAM) is built in too but cannot be tried here:
/// no broker that runs here authenticates.
#[test]
fn kafka_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = TlsCerts::make(d);
    let (plain, tls) = (free_port(), free_port());
    let _broker = tansu(&format!("127.0.0.1:{plain}"), &format!("127.0.0.1:{tls}"));
    let _tls = tls_terminator(tls, &format!("127.0.0.1:{plain}"), &certs);
    let brokers = format!("127.0.0.1:{tls}");
    let options = |ca: bool| {
        let mut o = "  options:\n    security.protocol: ssl\n".to_string();
        if ca {
            o += &format!("    ssl.ca.location: {}\n", certs.ca.display());
        }
        o
    };
    let run_once = |name: &str, yaml: String| {
        fs::write(d.join(format!("{name}.yaml")), yaml).unwrap();
        let (status, log) = run_to_end(
            d,
            &["run", "--once", &format!("{name}.yaml")],
            Duration::from_secs(120),
        );
        assert!(status.success(), "{log}");
        log
    };
    run_once(
        "produce",
        format!(
            "name: produce\nsource:\n  type: generate\n  count: 1000\n  template: {{\"file\": \"t\", \"seq\": \"{{{{seq}}}}\"}}\nsink:\n  type: kafka\n  brokers: {brokers}\n  topic: secure\n{}",
            options(true)
        ),
    );
    let log = run_once(
        "consume",
        format!(
            "name: consume\nsource:\n  type: kafka\n  brokers: {brokers}\n  topics: [secure]\n{}sink:\n  type: file\n  path: out.jsonl\n",
            options(true)
        ),
    );
    let (seen, bad) = seq_counts(&d.join("out.jsonl"), 1000);
    assert_eq!(bad, 0);
    assert!(seen.iter().all(|&c| c == 1), "each record once:\n{log}");

    fs::write(
        d.join("untrusted.yaml"),
        format!(
            "name: untrusted\nsource:\n  type: kafka\n  brokers: {brokers}\n  topics: [secure]\n{}sink:\n  type: file\n  path: untrusted.jsonl\n",
            options(false)
        ),
    )
    .unwrap();
    // `--check-connections` names the cause too, not only "transport failure".
    let out = ferry_output(d, &["validate", "--check-connections", "untrusted.yaml"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && said.contains("certificate verify failed"),
        "{said}"
    );
    let mut f = Ferry::start(d, &["run", "untrusted.yaml"]);
    let refused = wait_until(Duration::from_secs(30), || {
        f.log_text().contains("certificate verify failed")
    });
    f.signal(libc::SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    assert!(
        refused,
        "the untrusted certificate was not reported:\n{}",
        f.log_text()
    );
    assert!(status.success(), "{}", f.log_text());
    assert_eq!(count_lines(&d.join("untrusted.jsonl")), 0);
}

/// `validate --check-connections` names a topic a source would wait for
/// (it said ok), and leaves a sink's missing topic alone (the broker may
/// create it on the first write).
#[test]
fn check_connections_names_a_missing_topic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (there, missing) = (topic("there"), topic("missing"));
    create_topic(&kafka_brokers(), &there, 1);
    fs::write(
        d.join("read.yaml"),
        format!(
            "name: read\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [{there}, {missing}]\nsink:\n  type: file\n  path: out.jsonl\n"
        ),
    )
    .unwrap();
    fs::write(
        d.join("write.yaml"),
        format!(
            "name: write\nsource:\n  type: generate\n  count: 1\nsink:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topic: {missing}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(ferry_bin())
        .args(["validate", "--check-connections", "read.yaml", "write.yaml"])
        .current_dir(d)
        .env("KAFKA_BROKERS", kafka_brokers())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "read.yaml: pipeline read: source (kafka): no topic {missing} at"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&there) && !stderr.contains("write.yaml"),
        "{stderr}"
    );
}

/// A topic created after the source started, matching its `topic_pattern`,
/// is read within seconds: clients refresh metadata every 10 s unless told
/// otherwise (librdkafka's default, 5 minutes, left it unread that long).
#[test]
fn a_topic_created_after_start_is_read_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = format!("ferry_later_{}", fastrand::u32(..));
    let first = format!("{prefix}_a");
    create_topic(&kafka_brokers(), &first, 1);
    produce(d, &first, "a", 10);
    fs::write(
        d.join("consume.yaml"),
        format!(
            "name: consume\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topic_pattern: \"{prefix}_.*\"\n{FAST_GROUP}sink:\n  type: file\n  path: out.jsonl\ndelivery:\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
    let mut f = start(d, &["run", "consume.yaml"]);
    let out = d.join("out.jsonl");
    assert!(
        wait_until(Duration::from_secs(60), || count_lines(&out) == 10),
        "{}",
        f.log_text()
    );
    let later = format!("{prefix}_b");
    create_topic(&kafka_brokers(), &later, 1);
    // Its own folder: the running ferry holds the data folder of `d`.
    fs::create_dir_all(d.join("producer")).unwrap();
    produce(&d.join("producer"), &later, "b", 10);
    // Two refresh intervals and a rebalance, well short of 5 minutes.
    let read = wait_until(Duration::from_secs(60), || count_lines(&out) == 20);
    stops_cleanly(&mut f);
    assert!(read, "the later topic was not read:\n{}", f.log_text());
}

/// A `route` transform sends each record to the topic its field names
/// (through the route's map); a consumer of each topic finds exactly its
/// records.
#[test]
fn routed_records_go_to_their_topics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = format!("ferry_route_{}", fastrand::u32(..));
    for region in ["eu", "us"] {
        create_topic(&kafka_brokers(), &format!("{prefix}_{region}"), 1);
    }
    fs::create_dir_all(d.join("producer/in")).unwrap();
    let lines: String = (0..1000)
        .map(|seq| {
            let region = if seq % 4 == 0 { "us" } else { "eu" };
            format!("{{\"file\": \"a\", \"seq\": {seq}, \"region\": \"{region}\"}}\n")
        })
        .collect();
    fs::write(d.join("producer/in/a.jsonl"), lines).unwrap();
    fs::write(
        d.join("producer/produce.yaml"),
        format!(
            "name: produce\nsource:\n  type: file\n  path: in/*.jsonl\ntransforms:\n  - type: route\n    field: region\n    map: {{eu: {prefix}_eu, us: {prefix}_us}}\nsink:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topic: {prefix}_eu\n"
        ),
    )
    .unwrap();
    let mut f = start(&d.join("producer"), &["run", "--once", "produce.yaml"]);
    let status = f.wait_for_exit(Duration::from_secs(120)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());
    for region in ["eu", "us"] {
        fs::write(
            d.join(format!("{region}.yaml")),
            format!(
                "name: {region}\nsource:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [{prefix}_{region}]\n{FAST_GROUP}sink:\n  type: file\n  path: {region}.jsonl\ndelivery:\n  flush_interval: 100ms\n"
            ),
        )
        .unwrap();
    }
    let mut f = start(d, &["run", "eu.yaml", "us.yaml"]);
    let (eu, us) = (d.join("eu.jsonl"), d.join("us.jsonl"));
    let read = wait_until(Duration::from_secs(60), || {
        count_lines(&eu) == 750 && count_lines(&us) == 250
    });
    stops_cleanly(&mut f);
    assert!(read, "{}", f.log_text());
    let seqs = |path: &Path| -> Vec<u64> {
        let mut s: Vec<u64> = read_jsonl(path)
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        seqs(&us),
        (0..1000).filter(|s| s % 4 == 0).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&eu),
        (0..1000).filter(|s| s % 4 != 0).collect::<Vec<_>>()
    );
}
