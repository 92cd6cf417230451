//! Benchmark: Kafka → file on N messages of ~100 bytes (default 1,000,000)
//! already in a topic, beside a minimal raw rdkafka consumer that only counts
//! messages — the ceiling — in the same run.
//!
//! Both are timed from their first message to their last (joining a group
//! takes seconds on Tansu, and is not what is measured): the raw consumer
//! counts in this process; ferry (`run --once`, a fresh group each round,
//! file sink with its manifest) is timed from the first byte of its output
//! to the manifest saying every message is committed, polled every 5 ms.
//! A second baseline also parses each message as JSON and writes it back as
//! a line to a file, on the consumer's thread, with none of ferry's
//! guarantees (what a hand-written consumer would do). Each round runs the
//! three in turn and prints ferry's ratio to both.
//!
//! The broker is librdkafka's mock cluster, run inside this process and
//! reached over localhost TCP by all three consumers alike: it needs no
//! service and reports exact watermarks, so the topic is checked to hold
//! every message. `--brokers B` runs against another broker (Tansu at
//! 127.0.0.1:19092, which `scripts/services` starts, or a real Kafka).
//!
//! Usage: `bench_kafka [--records N] [--rounds R] [--batch-size N[,N…]] [--brokers B]`, or
//! `scripts/bench-kafka`, which builds in release mode first.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{arg, committed_offsets, create_topic, ferry_bin, produce_test_lines};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::get_rdkafka_version;

/// The mock cluster keeps at most 5 MB of each partition (older message
/// sets are dropped), so a million messages need this many.
const PARTITIONS: i32 = 32;

/// Messages per second, first message to last.
/// With `write`, each message is also parsed as JSON and written back as a
/// line to a file (what ferry does with it, minus everything that makes it
/// safe: positions, commits, fsyncs), on this one thread.
fn raw(brokers: &str, topic: &str, records: u64, write: bool) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut out = std::io::BufWriter::new(fs::File::create(dir.path().join("out.jsonl")).unwrap());
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-raw-{}", fastrand::u32(..)))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // As ferry sets it: at librdkafka's default (1 s) a consumer that
        // falls behind its fetches idles for most of each second.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let (mut n, mut bytes, mut first) = (0u64, 0usize, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < records {
        assert!(Instant::now() < deadline, "raw consumer: {n} of {records}");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                let payload = m.payload().unwrap_or_default();
                bytes += payload.len();
                if write {
                    let v: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
                    serde_json::to_writer(&mut out, &v).unwrap();
                    out.write_all(b"\n").unwrap();
                }
                n += 1;
            }
            Some(Err(e)) => eprintln!("raw consumer: {e}"),
            None => {}
        }
    }
    out.flush().unwrap();
    let seconds = first.expect("read something").elapsed().as_secs_f64();
    assert!(bytes > 0);
    (records - 1) as f64 / seconds
}

/// Messages per second, first output byte to everything committed.
fn ferry(brokers: &str, topic: &str, records: u64, batch_size: u64) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    fs::write(
        d.join("bench.yaml"),
        format!(
            "name: bench\nsource:\n  type: kafka\n  brokers: {brokers}\n  topics: [{topic}]\n  group_id: bench-ferry-{}\nsink:\n  type: file\n  path: out.jsonl\ndelivery:\n  batch_size: {batch_size}\n",
            fastrand::u32(..)
        ),
    )
    .unwrap();
    let mut child = Command::new(ferry_bin())
        .args(["run", "--once", "--data-dir", "data", "bench.yaml"])
        .current_dir(d)
        .env(
            "FERRY_LOG",
            std::env::var("FERRY_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("starting ferry");
    let out = d.join("out.jsonl");
    let manifest = d.join("out.jsonl.ferry-manifest");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        assert!(Instant::now() < deadline, "ferry never finished");
        if first.is_none() && fs::metadata(&out).is_ok_and(|m| m.len() > 0) {
            first = Some(Instant::now());
        }
        if first.is_some() && committed_offsets(&manifest) >= records {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = first.expect("started").elapsed().as_secs_f64();
    let status = child.wait().expect("ferry exits");
    assert!(status.success(), "ferry failed: {status}");
    let lines = fs::read_to_string(&out).unwrap().lines().count() as u64;
    assert_eq!(lines, records, "ferry's output holds every message once");
    records as f64 / seconds
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 =
        arg(&args, "--records").map_or(1_000_000, |s| s.parse().expect("--records N"));
    let rounds: u32 = arg(&args, "--rounds").map_or(2, |s| s.parse().expect("--rounds R"));
    let batch_size: u64 =
        arg(&args, "--batch-size").map_or(10_000, |s| s.parse().expect("--batch-size N"));
    let topic = format!("ferry_bench_{}", fastrand::u32(..));
    let mock;
    let mock_used = arg(&args, "--brokers").is_none();
    let brokers = match arg(&args, "--brokers") {
        Some(brokers) => {
            create_topic(&brokers, &topic, PARTITIONS);
            brokers
        }
        None => {
            mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
            mock.create_topic(&topic, PARTITIONS, 1).expect("topic");
            mock.bootstrap_servers()
        }
    };
    let start = Instant::now();
    produce_test_lines(&brokers, &topic, records, mock_used.then_some(PARTITIONS));
    eprintln!(
        "topic {topic} at {brokers}: {records} messages of ~100 bytes in {PARTITIONS} partitions, produced in {:.1} s; librdkafka {}; ferry: {}",
        start.elapsed().as_secs_f64(),
        get_rdkafka_version().1,
        ferry_bin().display()
    );
    println!(
        "{:<6} {:>12} {:>16} {:>14} {:>14} {:>14}",
        "round", "raw msgs/s", "raw+JSON+write", "ferry msgs/s", "ferry/raw", "ferry/raw+w"
    );
    for round in 1..=rounds {
        let r = raw(&brokers, &topic, records, false);
        let w = raw(&brokers, &topic, records, true);
        let f = ferry(&brokers, &topic, records, batch_size);
        println!(
            "{round:<6} {r:>12.0} {w:>16.0} {f:>14.0} {:>14.2} {:>14.2}",
            f / r,
            f / w
        );
    }
}
