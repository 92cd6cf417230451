//! Benchmark: what a chain of transforms costs. File → file on N records
//! of ~100 bytes (default 1,000,000), in the same run and on the same input:
//! 1. `ferry run --once` without transforms — the baseline;
//! 2. the same pipeline with rename + cast + filter (keeping half) + remap
//!    (VRL);
//! 3. `jq -c` running the equivalent program (what a user would otherwise
//!    pipe the file through).
//!
//! The three alternate `--rounds` times (default 3); the medians are
//! printed with records/s counted on the input (records read), and two
//! ratios: the chain's throughput to the baseline's (the issue's target: at
//! least 0.70, a cost of at most 30%) and to jq's (target: at least 3×).
//! Each output is checked: the chain's and jq's must hold the same records.
//!
//! Usage: `bench_transforms [--records N] [--rounds N] [--dir DIR]`, or
//! `scripts/bench-transforms`, which builds in release mode first.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_tests::{Value, arg, ferry_bin, measure};

const CHAIN: &str = "transforms:
  - type: rename
    fields: {cust: customer_id, amt: amount}
  - type: cast
    fields: {amount: float, qty: integer}
  - type: filter
    if: '.status != \"test\"'
  - type: remap
    source: '.total = to_float!(.qty) * to_float!(.amount)'
";

const JQ: &str = r#"select(.status != "test") | .customer_id = .cust | del(.cust) | .amount = (.amt | tonumber) | del(.amt) | .qty = (.qty | tonumber) | .total = .qty * .amount"#;

fn line(seq: u64) -> String {
    let status = if seq.is_multiple_of(2) { "ok" } else { "test" };
    let head = format!(
        r#"{{"seq":{seq},"cust":"c{}","amt":"{}.{:02}","qty":"{}","status":"{status}","pad":""#,
        seq % 1000,
        seq % 500,
        seq % 100,
        seq % 7 + 1
    );
    format!(
        "{head}{}\"}}\n",
        "x".repeat(100usize.saturating_sub(head.len() + 3))
    )
}

fn pipeline(dir: &Path, name: &str, transforms: &str) {
    fs::write(
        dir.join(format!("{name}.yaml")),
        format!(
            "name: {name}\nsource:\n  type: file\n  path: in/input.jsonl\n{transforms}sink:\n  type: file\n  path: out/{name}/out.jsonl\ndelivery:\n  batch_size: 10000\n"
        ),
    )
    .unwrap();
}

fn run_ferry(dir: &Path, name: &str) -> f64 {
    let _ = fs::remove_dir_all(dir.join("data"));
    let _ = fs::remove_dir_all(dir.join("out").join(name));
    measure(
        name,
        Command::new(ferry_bin())
            .args([
                "run",
                "--once",
                "--data-dir",
                "data",
                &format!("{name}.yaml"),
            ])
            .current_dir(dir)
            .env("FERRY_LOG", "warn")
            .env("FERRY_API", "off")
            .stdout(Stdio::null()),
    )
    .seconds
}

fn run_jq(dir: &Path) -> f64 {
    let input = dir.join("in/input.jsonl");
    let output = dir.join("out/jq.jsonl");
    measure(
        "jq",
        Command::new("sh").arg("-c").arg(format!(
            "jq -c '{JQ}' {} > {} && sync {}",
            input.display(),
            output.display(),
            output.display()
        )),
    )
    .seconds
}

/// The records of a JSON-lines file, each with its keys sorted and its
/// numbers as f64, to compare ferry's output with jq's.
fn normalized(path: &Path) -> Vec<String> {
    BufReader::new(File::open(path).expect("output"))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(&l.unwrap()).expect("JSON");
            let Value::Object(map) = v else {
                panic!("not an object")
            };
            let sorted: std::collections::BTreeMap<_, _> = map
                .into_iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(f) => (k, format!("{f}")),
                    None => (k, v.to_string()),
                })
                .collect();
            format!("{sorted:?}")
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 =
        arg(&args, "--records").map_or(1_000_000, |s| s.parse().expect("--records N"));
    let rounds: usize = arg(&args, "--rounds").map_or(3, |s| s.parse().expect("--rounds N"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = arg(&args, "--dir").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    fs::create_dir_all(dir.join("in")).unwrap();
    fs::create_dir_all(dir.join("out")).unwrap();
    let input = dir.join("in/input.jsonl");
    {
        let mut w = BufWriter::new(File::create(&input).unwrap());
        for seq in 0..records {
            w.write_all(line(seq).as_bytes()).unwrap();
        }
        w.flush().unwrap();
    }
    let bytes = fs::metadata(&input).unwrap().len();
    eprintln!(
        "input: {records} records, {:.1} MB; ferry: {}",
        bytes as f64 / 1e6,
        ferry_bin().display()
    );
    pipeline(&dir, "plain", "");
    pipeline(&dir, "chain", CHAIN);

    let (mut plain, mut chain, mut jq) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        plain.push(run_ferry(&dir, "plain"));
        chain.push(run_ferry(&dir, "chain"));
        jq.push(run_jq(&dir));
        eprintln!(
            "round {round}: plain {:.2} s, chain {:.2} s, jq {:.2} s",
            plain[round], chain[round], jq[round]
        );
    }
    let ours = normalized(&dir.join("out/chain/out.jsonl"));
    assert_eq!(
        ours.len() as u64,
        records / 2 + records % 2,
        "the filter keeps half"
    );
    assert!(
        ours == normalized(&dir.join("out/jq.jsonl")),
        "ferry's chain and jq's program must give the same records"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, c, j) = (median(&mut plain), median(&mut chain), median(&mut jq));
    let rate = |s: f64| records as f64 / s;
    println!(
        "{:<44} {:>12} {:>8}",
        "run (median of rounds)", "records/s", "MB/s"
    );
    for (name, s) in [
        ("ferry file→file, no transforms", p),
        ("ferry file→file, rename+cast+filter+remap", c),
        ("jq -c, the same program", j),
    ] {
        println!(
            "{name:<44} {:>12.0} {:>8.1}",
            rate(s),
            bytes as f64 / 1e6 / s
        );
    }
    println!(
        "chain / no transforms: {:.2} (target ≥ 0.70); chain / jq: {:.2}× (target ≥ 3×)",
        p / c,
        j / c
    );
}
