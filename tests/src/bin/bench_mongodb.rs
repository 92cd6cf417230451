//! Benchmark: file → MongoDB and Kafka → MongoDB on N records of ~100 bytes
//! (default 1,000,000), in the same run as
//! * a raw `insert_many` load of the same documents with the same driver
//!   (unordered batches of 1,000, journaled, documents parsed before the
//!   clock starts): the server's ceiling for durable writes;
//! * the Python tutorials' consumers of the same topic
//!   (`scripts/bench/mongo_consumers.py`): kafka-python + pymongo
//!   `insert_one` per message (on `--tutorial-records`, default 50,000: it
//!   is slow) and confluent-kafka + `insert_many` + a commit after each write.
//!
//! Each run writes into a fresh collection and is checked to hold every
//! record once. ferry runs `run --once` with ids from positions (`write:
//! insert`, the default); file → MongoDB is timed over the whole run,
//! Kafka → MongoDB from its first document to the commit of its last
//! (joining a group on Tansu takes seconds and is not what is measured), as
//! are the Python consumers, which time themselves.
//!
//! Usage: `bench_mongodb [--records N] [--tutorial-records N] [--brokers B]
//! [--upsert]` (MONGODB_URI, KAFKA_BROKERS, FERRY_BENCH_PYTHON), or
//! `scripts/bench-mongodb`, which builds in release mode and installs the
//! Python clients first.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{
    arg, bench_python, committed_offsets, create_topic, delete_topic, ferry_bin, kafka_brokers,
    measure, mongodb_count, mongodb_uri, produce_test_lines, test_line, with_mongodb,
    workspace_root,
};
use mongodb::bson::Document;
use mongodb::options::WriteConcern;

const PARTITIONS: i32 = 8;

/// Seconds from the first document in `db.coll` to ferry's offset store
/// (`offsets`) saying that all `records` are committed (durable), polled
/// every 20 ms while `child` runs. The collection is counted only until its
/// first document: SecantusDB counts a collection by reading it, and 50
/// counts a second of a growing collection took the server more CPU than
/// ferry's writes (it ran at 1.6 cores instead of 1.1).
fn time_by_offsets(
    child: &mut std::process::Child,
    db: &str,
    coll: &str,
    offsets: &std::path::Path,
    records: u64,
) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(mongodb::Client::with_uri_str(mongodb_uri()))
        .expect("client");
    let coll = client.database(db).collection::<Document>(coll);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first = None;
    loop {
        assert!(Instant::now() < deadline, "never finished");
        let n = if first.is_none() {
            let n = rt
                .block_on(async { coll.estimated_document_count().await })
                .unwrap_or(0);
            if n > 0 {
                first = Some(Instant::now());
            }
            n
        } else {
            committed_offsets(offsets)
        };
        if first.is_some() && committed_offsets(offsets) >= records {
            break;
        }
        if let Some(status) = child.try_wait().expect("child") {
            panic!("exited early ({status}) at {n} of {records}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    first.expect("started").elapsed().as_secs_f64()
}

fn drop_collection(db: &str, coll: &str) {
    with_mongodb(async |c| {
        c.database(db)
            .collection::<Document>(coll)
            .drop()
            .await
            .expect("drop")
    });
}

/// Runs a Python consumer; returns its own clock's seconds.
fn python_consumer(mode: &str, brokers: &str, topic: &str, db: &str, records: u64) -> f64 {
    let out = Command::new(bench_python())
        .arg(workspace_root().join("scripts/bench/mongo_consumers.py"))
        .args([
            mode,
            brokers,
            topic,
            &format!("bench-{mode}-{}", fastrand::u32(..)),
            &mongodb_uri(),
            db,
            mode,
            &records.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bench_python()));
    assert!(out.status.success(), "the {mode} consumer failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("its JSON line");
    assert!(v["messages"].as_u64().expect("messages") >= records);
    v["seconds"].as_f64().expect("seconds")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 =
        arg(&args, "--records").map_or(1_000_000, |s| s.parse().expect("--records N"));
    let tutorial_records: u64 = arg(&args, "--tutorial-records").map_or(50_000.min(records), |s| {
        s.parse().expect("--tutorial-records N")
    });
    let brokers = arg(&args, "--brokers").unwrap_or_else(kafka_brokers);
    let upsert = args.iter().any(|a| a == "--upsert");
    let db = format!("ferry_bench_{}", fastrand::u32(..));
    let topic = format!("ferry_bench_{}", fastrand::u32(..));
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut input = String::with_capacity(records as usize * 100);
    for seq in 0..records {
        input.push_str(&test_line("bench", seq, 100));
    }
    fs::write(d.join("input.jsonl"), &input).unwrap();
    create_topic(&brokers, &topic, PARTITIONS);
    let start = Instant::now();
    produce_test_lines(&brokers, &topic, records, None);
    eprintln!(
        "{records} records of ~100 bytes into {} (database {db}); topic {topic} at {brokers} \
         ({PARTITIONS} partitions, produced in {:.1} s); ferry: {}",
        mongodb_uri(),
        start.elapsed().as_secs_f64(),
        ferry_bin().display()
    );

    // The ceiling: the documents parsed up front, then only the writes timed.
    let docs: Vec<Document> = input
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            mongodb::bson::to_document(&v).unwrap()
        })
        .collect();
    drop(input);
    let raw_seconds = with_mongodb(async |c| {
        let coll = c.database(&db).collection::<Document>("raw");
        let journaled = WriteConcern::builder()
            .w(mongodb::options::Acknowledgment::Nodes(1))
            .journal(true)
            .build();
        let start = Instant::now();
        for chunk in docs.chunks(1000) {
            coll.insert_many(chunk.to_vec())
                .ordered(false)
                .write_concern(journaled.clone())
                .await
                .expect("insert_many");
        }
        start.elapsed().as_secs_f64()
    });
    drop(docs);
    assert_eq!(mongodb_count(&db, "raw"), records);
    // Each run starts from the same server state: a million documents
    // left behind would crowd the next run out of the server's cache.
    drop_collection(&db, "raw");

    // (name, records, seconds)
    let mut rows = vec![(
        "raw insert_many (batches of 1,000, j:true)".to_string(),
        records,
        raw_seconds,
    )];
    let writes: &[&str] = if upsert {
        &["insert", "upsert"]
    } else {
        &["insert"]
    };
    for write in writes {
        fs::write(
            d.join("file.yaml"),
            format!(
                "name: bench-file-{write}\nsource:\n  type: file\n  path: input.jsonl\nsink:\n  type: mongodb\n  uri: {}\n  database: {db}\n  collection: file_{write}\n  write: {write}\n",
                mongodb_uri()
            ),
        )
        .unwrap();
        let m = measure(
            &format!("ferry file→mongodb ({write})"),
            Command::new(ferry_bin())
                .args(["run", "--once", "--data-dir", "data", "file.yaml"])
                .current_dir(d)
                .env("FERRY_LOG", "warn")
                .stdout(Stdio::null()),
        );
        assert_eq!(mongodb_count(&db, &format!("file_{write}")), records);
        drop_collection(&db, &format!("file_{write}"));
        rows.push((m.name, records, m.seconds));
    }

    fs::write(
        d.join("kafka.yaml"),
        format!(
            "name: bench-kafka\nsource:\n  type: kafka\n  brokers: {brokers}\n  topics: [{topic}]\n  group_id: bench-ferry-{}\nsink:\n  type: mongodb\n  uri: {}\n  database: {db}\n  collection: kafka\n",
            fastrand::u32(..),
            mongodb_uri()
        ),
    )
    .unwrap();
    // A daemon stopped once every document is in: `--once` needs exact
    // high watermarks, and Tansu reports the start of its last batch.
    let mut child = Command::new(ferry_bin())
        .args(["run", "--data-dir", "data", "kafka.yaml"])
        .current_dir(d)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("ferry");
    let seconds = time_by_offsets(
        &mut child,
        &db,
        "kafka",
        &d.join("data/offsets/bench-kafka.json"),
        records,
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("ferry").success(), "ferry failed");
    assert_eq!(mongodb_count(&db, "kafka"), records);
    drop_collection(&db, "kafka");
    rows.push(("ferry kafka→mongodb (insert)".to_string(), records, seconds));

    let seconds = python_consumer("batched", &brokers, &topic, &db, records);
    assert_eq!(mongodb_count(&db, "batched"), records);
    drop_collection(&db, "batched");
    rows.push((
        "python confluent-kafka + insert_many".to_string(),
        records,
        seconds,
    ));
    let seconds = python_consumer("tutorial", &brokers, &topic, &db, tutorial_records);
    rows.push((
        format!("python kafka-python + insert_one ({tutorial_records})"),
        tutorial_records,
        seconds,
    ));

    with_mongodb(async |c| c.database(&db).drop().await.expect("drop"));
    delete_topic(&brokers, &topic);
    println!("{:<48} {:>10} {:>12}", "run", "docs/s", "/ raw");
    for (name, n, seconds) in &rows {
        let rate = *n as f64 / seconds;
        println!(
            "{name:<48} {rate:>10.0} {:>12.2}",
            rate / (records as f64 / raw_seconds)
        );
    }
}
