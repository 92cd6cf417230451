//! `scripts/demo`: the producer → Kafka → MongoDB demo, killed mid-way with
//! SIGKILL and restarted; prints the counts and fails if any record was
//! lost or duplicated.

use std::process::ExitCode;

fn main() -> ExitCode {
    let root = ferry_tests::workspace_root();
    let work = tempfile::tempdir().expect("temp dir");
    let counts = ferry_tests::demo::run(&root.join("configs/demo"), work.path());
    println!(
        "documents in testnum.testnum: {}, distinct num values: {}",
        counts.documents, counts.distinct_num
    );
    if counts.documents == 500 && counts.distinct_num == 500 {
        println!("ok: each of the 500 records exactly once, across a SIGKILL");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: expected 500 and 500");
        ExitCode::FAILURE
    }
}
