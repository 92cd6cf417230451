//! Benchmark: file → PostgreSQL on N records of ~100 bytes (default
//! 1,000,000), beside `psql \copy` of the same rows into the same kind of
//! table — the ceiling on this machine — in the same run.
//!
//! Runs, each into a fresh table `(file text, seq bigint, pad text)`:
//! 1. `psql \copy` of the rows as tab-separated text (no key);
//! 2. `ferry run --once`, `mode: insert` (no key);
//! 3. `psql \copy` into a table with `PRIMARY KEY (file, seq)`;
//! 4. `ferry run --once`, `mode: upsert` on `(file, seq)`.
//!
//! Prints records/s for each and ferry's ratio to the matching `\copy`.
//! Usage: `bench_postgres [--records N] [--url URL]` (or PG_URL), or
//! `scripts/bench-postgres`, which builds in release mode first.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::process::{Command, Stdio};

use ferry_tests::{arg, ferry_bin, measure, pg_url, psql_at as psql, test_line};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 =
        arg(&args, "--records").map_or(1_000_000, |s| s.parse().expect("--records N"));
    let url = arg(&args, "--url").unwrap_or_else(pg_url);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    let input = d.join("in/input.jsonl");
    let tsv = d.join("input.tsv");
    {
        let mut json = BufWriter::new(File::create(&input).unwrap());
        let mut text = BufWriter::new(File::create(&tsv).unwrap());
        for seq in 0..records {
            let line = test_line("bench", seq, 100);
            json.write_all(line.as_bytes()).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            writeln!(text, "bench\t{seq}\t{}", v["pad"].as_str().unwrap()).unwrap();
        }
        json.flush().unwrap();
        text.flush().unwrap();
    }
    eprintln!(
        "input: {records} records, {:.1} MB; ferry: {}",
        fs::metadata(&input).unwrap().len() as f64 / 1e6,
        ferry_bin().display()
    );

    let suffix = fastrand::u32(..);
    let mut rows = Vec::new();
    for keyed in [false, true] {
        let key = if keyed {
            ", PRIMARY KEY (file, seq)"
        } else {
            ""
        };
        let copy_table = format!("ferry_bench_copy_{suffix}_{keyed}");
        let ferry_table = format!("ferry_bench_ferry_{suffix}_{keyed}");
        for t in [&copy_table, &ferry_table] {
            psql(
                &url,
                &format!(
                    "CREATE TABLE {t} (file text NOT NULL, seq bigint NOT NULL, pad text{key})"
                ),
            );
        }
        psql(&url, "CHECKPOINT");
        let copy = measure(
            &format!("psql \\copy{}", if keyed { " (keyed table)" } else { "" }),
            Command::new("psql").arg(&url).args([
                "-qX",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("\\copy {copy_table} FROM '{}'", tsv.display()),
            ]),
        );
        let mode = if keyed {
            "mode: upsert\n  key: [file, seq]"
        } else {
            "mode: insert"
        };
        fs::write(
            d.join("bench.yaml"),
            format!(
                "name: {ferry_table}\nsource:\n  type: file\n  path: in/input.jsonl\nsink:\n  type: postgres\n  url: {url}\n  table: {ferry_table}\n  {mode}\n"
            ),
        )
        .unwrap();
        let _ = fs::remove_dir_all(d.join("data"));
        psql(&url, "CHECKPOINT");
        let ferry = measure(
            &format!(
                "ferry file→postgres ({})",
                if keyed { "upsert" } else { "insert" }
            ),
            Command::new(ferry_bin())
                .args(["run", "--once", "--data-dir", "data", "bench.yaml"])
                .current_dir(d)
                .env("FERRY_LOG", "warn")
                .stdout(Stdio::null()),
        );
        for t in [&copy_table, &ferry_table] {
            let n: u64 = psql(&url, &format!("SELECT count(*) FROM {t}"))
                .parse()
                .unwrap();
            assert_eq!(n, records, "{t} must hold every record");
        }
        psql(
            &url,
            &format!(
                "DROP TABLE {copy_table}, {ferry_table}; DELETE FROM ferry_offsets WHERE pipeline = '{ferry_table}'"
            ),
        );
        rows.push((copy, ferry));
    }
    println!("{:<34} {:>12} {:>14}", "run", "records/s", "peak RSS (MB)");
    for (copy, ferry) in &rows {
        for m in [copy, ferry] {
            println!(
                "{:<34} {:>12.0} {:>14.1}",
                m.name,
                records as f64 / m.seconds,
                m.peak_rss_kb as f64 / 1024.0
            );
        }
    }
    for (copy, ferry) in &rows {
        println!(
            "{}: {:.2} of {}",
            ferry.name,
            copy.seconds / ferry.seconds,
            copy.name
        );
    }
}
