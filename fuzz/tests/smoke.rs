//! The fuzz targets' short run for every `cargo test`: each target over
//! its committed corpus (seeds, and every input that once failed), then
//! random mutations of those inputs for a few seconds. The long runs are
//! libFuzzer's (`fuzz/libfuzzer`, see its README).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_connector_file::Format;

/// Per target; five targets, so well under a minute in all.
const MUTATING: Duration = Duration::from_secs(6);

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!inputs.is_empty(), "no corpus for {target}");
    inputs.sort();
    inputs
}

/// A random edit of `input`: flip, insert, delete, duplicate or splice in
/// one of the bytes a parser cares about.
fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    const SPECIAL: &[u8] = b"\"\\\n\r,{}[]:-0123456789eE.\t #\xef\xbb\xbf\xfe$";
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..8) {
        let at = rng.usize(..=out.len());
        match rng.u8(..5) {
            0 if !out.is_empty() => {
                let i = rng.usize(..out.len());
                out[i] ^= 1 << rng.u8(..8);
            }
            1 => out.insert(at, SPECIAL[rng.usize(..SPECIAL.len())]),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 if !out.is_empty() => {
                let start = rng.usize(..out.len());
                let end = (start + rng.usize(1..32)).min(out.len());
                let piece = out[start..end].to_vec();
                out.splice(at..at, piece);
            }
            _ => out.insert(at, rng.u8(..)),
        }
    }
    out.truncate(64 * 1024);
    out
}

fn run(target: &str, check: impl Fn(&[u8])) {
    let inputs = corpus(target);
    for input in &inputs {
        check(input);
    }
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < MUTATING {
        let base = &inputs[rng.usize(..inputs.len())];
        let input = mutate(&mut rng, base);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        if caught.is_err() {
            panic!(
                "{target} failed on this input (add it to fuzz/corpus/{target}/): {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        runs += 1;
    }
    eprintln!("{target}: {} corpus inputs, {runs} mutations", inputs.len());
}

#[test]
fn config_loader() {
    run("config", ferry_fuzz::config);
}

#[test]
fn file_source_json_lines() {
    run("file_json", |d| ferry_fuzz::file_source(Format::Json, d));
}

#[test]
fn file_source_csv() {
    run("file_csv", |d| ferry_fuzz::file_source(Format::Csv, d));
}

#[test]
fn file_source_text() {
    run("file_text", |d| ferry_fuzz::file_source(Format::Text, d));
}

#[test]
fn payload_check_agrees_with_the_parse() {
    run("payload", ferry_fuzz::payload);
}
