//! Benchmark: file → MongoDB on N records of ~100 bytes (default 200,000),
//! beside a raw `insert_many` load of the same documents with the same
//! driver (unordered batches of 1,000, journaled: the server's ceiling for
//! durable writes), in the same run, each into a fresh collection.
//!
//! ferry runs `run --once` with `write: insert` and `write: upsert` (the
//! default), ids from positions. Prints documents/s and ferry's ratios.
//! Usage: `bench_mongodb [--records N]` (MONGODB_URI), or
//! `scripts/bench-mongodb`, which builds in release mode first.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Instant;

use ferry_tests::{arg, ferry_bin, measure, mongodb_count, mongodb_uri, test_line, with_mongodb};
use mongodb::bson::Document;
use mongodb::options::WriteConcern;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = arg(&args, "--records").map_or(200_000, |s| s.parse().expect("--records N"));
    let db = format!("ferry_bench_{}", fastrand::u32(..));
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut input = String::with_capacity(records as usize * 100);
    for seq in 0..records {
        input.push_str(&test_line("bench", seq, 100));
    }
    fs::write(d.join("input.jsonl"), &input).unwrap();
    eprintln!(
        "{records} records of ~100 bytes into {} (database {db}); ferry: {}",
        mongodb_uri(),
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
    assert_eq!(mongodb_count(&db, "raw"), records);

    let mut rows = vec![(
        "raw insert_many (batches of 1,000)".to_string(),
        raw_seconds,
    )];
    for write in ["insert", "upsert"] {
        fs::write(
            d.join("bench.yaml"),
            format!(
                "name: bench-{write}\nsource:\n  type: file\n  path: input.jsonl\nsink:\n  type: mongodb\n  uri: {}\n  database: {db}\n  collection: {write}\n  write: {write}\n",
                mongodb_uri()
            ),
        )
        .unwrap();
        let _ = fs::remove_dir_all(d.join("data"));
        let m = measure(
            &format!("ferry file→mongodb ({write})"),
            Command::new(ferry_bin())
                .args(["run", "--once", "--data-dir", "data", "bench.yaml"])
                .current_dir(d)
                .env("FERRY_LOG", "warn")
                .stdout(Stdio::null()),
        );
        assert_eq!(
            mongodb_count(&db, write),
            records,
            "{write}: every record once"
        );
        rows.push((m.name, m.seconds));
    }
    with_mongodb(async |c| c.database(&db).drop().await.expect("drop"));
    println!("{:<40} {:>12}", "run", "docs/s");
    for (name, seconds) in &rows {
        println!("{name:<40} {:>12.0}", records as f64 / seconds);
    }
    for (name, seconds) in &rows[1..] {
        println!("{name}: {:.2} of raw insert_many", raw_seconds / seconds);
    }
}
