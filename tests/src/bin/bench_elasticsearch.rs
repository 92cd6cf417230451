//! Benchmark: file → Elasticsearch on N records of ~100 bytes (default
//! 200,000), on each ES-API server, in the same run as
//! * pre-built `_bulk` bodies of 1,000 documents with explicit ids, sent
//!   one after another by one `curl` over one connection: the server's
//!   ceiling (bodies built before the clock starts);
//! * elasticsearch-py's `helpers.streaming_bulk` loading the same file
//!   (`scripts/bench/es_loader.py`, 1,000 actions per request).
//!
//! ferry runs `run --once` with ids from positions (`action: index`, the
//! default), timed over the whole run. Each run writes a fresh index and is
//! checked to hold every record once (`_count` after `_refresh`).
//!
//! Usage: `bench_elasticsearch [--records N]` (ES_URL, OSMEM_URL,
//! FERRY_BENCH_PYTHON), or `scripts/bench-elasticsearch`, which builds in
//! release mode and installs the Python client first.

use std::fmt::Write as _;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Instant;

use ferry_tests::{
    arg, bench_python, es_count, es_servers, ferry_bin, http, measure, test_line, workspace_root,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = arg(&args, "--records").map_or(200_000, |s| s.parse().expect("--records N"));
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    let mut input = String::with_capacity(records as usize * 100);
    for seq in 0..records {
        input.push_str(&test_line("bench", seq, 100));
    }
    fs::write(d.join("in/input.jsonl"), &input).unwrap();
    eprintln!(
        "{records} records of ~100 bytes; ferry: {}",
        ferry_bin().display()
    );

    let mut table = Vec::new();
    for (server, url) in es_servers() {
        let run = fastrand::u32(..);
        // The ceiling: bodies of 1,000 documents written to files first,
        // then one curl sends them all over one connection.
        let curl_index = format!("bench-curl-{run}");
        let mut config = String::new();
        for (chunk, lines) in input.lines().collect::<Vec<_>>().chunks(1000).enumerate() {
            let mut body = String::with_capacity(lines.len() * 160);
            for (i, line) in lines.iter().enumerate() {
                let id = chunk * 1000 + i;
                writeln!(
                    body,
                    r#"{{"index":{{"_index":"{curl_index}","_id":"{id}"}}}}"#
                )
                .unwrap();
                body.push_str(line);
                body.push('\n');
            }
            let path = d.join(format!("body-{chunk}.ndjson"));
            fs::write(&path, body).unwrap();
            if chunk > 0 {
                config.push_str("next\n");
            }
            writeln!(
                config,
                "url = \"{url}/_bulk\"\ndata-binary = \"@{}\"\nheader = \"Content-Type: application/x-ndjson\"\noutput = \"/dev/null\"",
                path.display()
            )
            .unwrap();
        }
        fs::write(d.join("curl.conf"), config).unwrap();
        let start = Instant::now();
        let status = Command::new("curl")
            .args(["-sf", "-K"])
            .arg(d.join("curl.conf"))
            .status()
            .expect("curl");
        let curl_seconds = start.elapsed().as_secs_f64();
        assert!(status.success(), "{server}: curl failed");
        assert_eq!(
            es_count(&url, &curl_index),
            records,
            "{server}: curl's index"
        );

        // elasticsearch-py 8 sends Elasticsearch's compatibility media
        // types, which an OpenSearch-API server refuses (406), as real
        // OpenSearch does: no Python row there.
        let py_index = format!("bench-python-{run}");
        let py_seconds = if server == "osmem" {
            None
        } else {
            let out = Command::new(bench_python())
                .arg(workspace_root().join("scripts/bench/es_loader.py"))
                .args([url.as_str(), py_index.as_str()])
                .arg(d.join("in/input.jsonl"))
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", bench_python()));
            assert!(out.status.success(), "{server}: the Python loader failed");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("its JSON line");
            assert_eq!(
                es_count(&url, &py_index),
                records,
                "{server}: Python's index"
            );
            Some(v["seconds"].as_f64().expect("seconds"))
        };
        let ferry_index = format!("bench-ferry-{run}");
        fs::write(
            d.join("es.yaml"),
            format!(
                "name: bench-es-{run}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: elasticsearch\n  urls: [{url}]\n  index: {ferry_index}\n"
            ),
        )
        .unwrap();
        let m = measure(
            "ferry",
            Command::new(ferry_bin())
                .args(["run", "--once", "--data-dir", "data", "es.yaml"])
                .current_dir(d)
                .env("FERRY_LOG", "warn")
                .stdout(Stdio::null()),
        );
        assert_eq!(
            es_count(&url, &ferry_index),
            records,
            "{server}: ferry's index"
        );
        for index in [&curl_index, &py_index, &ferry_index] {
            http(&url, "DELETE", &format!("/{index}"), None);
        }
        table.push((server, curl_seconds, py_seconds, m.seconds));
    }
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>12} {:>12}",
        "server", "curl docs/s", "python docs/s", "ferry docs/s", "ferry/curl", "ferry/python"
    );
    let rate = |s: f64| records as f64 / s;
    for (server, c, p, f) in table {
        let (py, ratio) = match p {
            Some(p) => (format!("{:.0}", rate(p)), format!("{:.2}", p / f)),
            None => ("n/a".to_string(), "n/a".to_string()),
        };
        println!(
            "{server:<8} {:>14.0} {py:>14} {:>14.0} {:>12.2} {ratio:>12}",
            rate(c),
            rate(f),
            c / f,
        );
    }
}
