//! Benchmark: file → file on N records of ~100 bytes (default 1,000,000).
//!
//! Runs, in the same session and on the same input:
//! 1. `cat IN > OUT` — the copy ceiling;
//! 2. a minimal program that reads each line, parses the JSON and writes it
//!    back (this binary's `parse-write` mode) — the work ferry must do at least;
//! 3. `ferry run --once` with a file → file pipeline (release build).
//!
//! Prints records/s, MB/s and peak RSS (from wait4's rusage) for each, and
//! ferry's ratio to the parse-and-write baseline.
//!
//! With `--against OTHER_FERRY`, also runs the same pipeline with another
//! ferry binary (an earlier commit's), alternating the two `--rounds` times
//! (default 5), and prints the median of each and their ratio: how a change
//! costs or gains, measured in one run.
//!
//! Usage: `bench_file [--records N] [--batch-size N] [--dir DIR]
//! [--against FERRY --rounds N]`, or `scripts/bench-file` which builds in
//! release mode first.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_tests::{Value, arg, ferry_bin, measure, test_line};

fn parse_write(input: &Path, output: &Path) {
    let reader = BufReader::with_capacity(64 * 1024, File::open(input).expect("input"));
    let file = File::create(output).expect("output");
    let mut out = BufWriter::with_capacity(64 * 1024, &file);
    for line in reader.split(b'\n') {
        let line = line.expect("read");
        let v: Value = serde_json::from_slice(&line).expect("valid JSON");
        serde_json::to_writer(&mut out, &v).expect("write");
        out.write_all(b"\n").expect("write");
    }
    out.flush().expect("flush");
    drop(out);
    file.sync_all().expect("fsync");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("parse-write") {
        parse_write(Path::new(&args[2]), Path::new(&args[3]));
        return;
    }
    let records: u64 =
        arg(&args, "--records").map_or(1_000_000, |s| s.parse().expect("--records N"));
    // The default batch size, and a larger one: commits cost fsyncs, and a
    // larger batch commits less often without holding more in memory.
    let batch_sizes: Vec<u64> = arg(&args, "--batch-size")
        .unwrap_or_else(|| "1000,10000".to_string())
        .split(',')
        .map(|s| s.parse().expect("--batch-size N[,N...]"))
        .collect();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = arg(&args, "--dir").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    fs::create_dir_all(dir.join("in")).unwrap();
    fs::create_dir_all(dir.join("out")).unwrap();

    let input = dir.join("in/input.jsonl");
    {
        let mut w = BufWriter::new(File::create(&input).unwrap());
        for seq in 0..records {
            w.write_all(test_line("bench", seq, 100).as_bytes())
                .unwrap();
        }
        w.flush().unwrap();
    }
    let bytes = fs::metadata(&input).unwrap().len();
    let ferry = ferry_bin();
    eprintln!(
        "input: {records} records, {:.1} MB; ferry: {}",
        bytes as f64 / 1e6,
        ferry.display()
    );

    let me = std::env::current_exe().unwrap();
    let cat_out = dir.join("out/cat.jsonl");
    let mut runs = vec![
        measure(
            "cat (copy ceiling)",
            Command::new("sh").arg("-c").arg(format!(
                "cat {} > {} && sync {}",
                input.display(),
                cat_out.display(),
                cat_out.display()
            )),
        ),
        measure(
            "parse+write baseline",
            Command::new(&me).args([
                "parse-write",
                input.to_str().unwrap(),
                dir.join("out/parse.jsonl").to_str().unwrap(),
            ]),
        ),
    ];
    for batch_size in batch_sizes {
        let _ = fs::remove_dir_all(dir.join("data"));
        let _ = fs::remove_dir_all(dir.join("out/ferry"));
        fs::write(
            dir.join("bench.yaml"),
            format!(
                "name: bench\nsource:\n  type: file\n  path: in/input.jsonl\nsink:\n  type: file\n  path: out/ferry/out.jsonl\ndelivery:\n  batch_size: {batch_size}\n"
            ),
        )
        .unwrap();
        runs.push(measure(
            &format!("ferry file→file (batch_size {batch_size})"),
            Command::new(ferry)
                .args(["run", "--once", "--data-dir", "data", "bench.yaml"])
                .current_dir(&dir)
                .env("FERRY_LOG", "warn")
                .stdout(Stdio::null()),
        ));
        let got = BufReader::new(File::open(dir.join("out/ferry/out.jsonl")).unwrap())
            .lines()
            .count() as u64;
        assert_eq!(got, records, "ferry's output must hold every record");
    }

    println!(
        "{:<34} {:>12} {:>10} {:>14}",
        "run", "records/s", "MB/s", "peak RSS (MB)"
    );
    for m in &runs {
        println!(
            "{:<34} {:>12.0} {:>10.1} {:>14.1}",
            m.name,
            records as f64 / m.seconds,
            bytes as f64 / 1e6 / m.seconds,
            m.peak_rss_kb as f64 / 1024.0
        );
    }
    for m in &runs[2..] {
        println!(
            "{}: {:.2} of parse+write, {:.3} of cat",
            m.name,
            runs[1].seconds / m.seconds,
            runs[0].seconds / m.seconds
        );
    }
    if let Some(other) = arg(&args, "--against") {
        let rounds = arg(&args, "--rounds").map_or(5, |s| s.parse().expect("--rounds N"));
        against(&dir, ferry, Path::new(&other), rounds, records);
    }
}

/// This ferry and `other` on the same pipeline (batch_size 10000),
/// alternating, `rounds` times each: medians and their ratio.
fn against(dir: &Path, this: &Path, other: &Path, rounds: usize, records: u64) {
    let run = |bin: &Path| {
        let _ = fs::remove_dir_all(dir.join("data"));
        let _ = fs::remove_dir_all(dir.join("out/ferry"));
        measure(
            &bin.display().to_string(),
            Command::new(bin)
                .args(["run", "--once", "--data-dir", "data", "bench.yaml"])
                .current_dir(dir)
                .env("FERRY_LOG", "warn")
                .env("FERRY_API", "127.0.0.1:0")
                .stdout(Stdio::null()),
        )
        .seconds
    };
    fs::write(
        dir.join("bench.yaml"),
        "name: bench\nsource:\n  type: file\n  path: in/input.jsonl\nsink:\n  type: file\n  path: out/ferry/out.jsonl\ndelivery:\n  batch_size: 10000\n",
    )
    .unwrap();
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        mine.push(run(this));
        theirs.push(run(other));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m, t) = (median(&mut mine), median(&mut theirs));
    println!(
        "this ferry {:.0} records/s, {} {:.0} records/s (medians of {rounds}, alternating): {:.3} of it",
        records as f64 / m,
        other.display(),
        records as f64 / t,
        t / m
    );
}
