//! file → file pipelines driven through the real binary: crashes, growing and
//! rotating inputs, bad records, graceful shutdown, offsets commands.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ferry_tests::*;

const SIGTERM: i32 = libc::SIGTERM;

fn write_pipeline(dir: &Path, name: &str, extra_sink: &str, extra: &str) {
    let yaml = format!(
        "name: {name}\nsource:\n  type: file\n  path: in/*.jsonl\n  poll_interval: 50ms\nsink:\n  type: file\n  path: out/out.jsonl\n{extra_sink}delivery:\n  batch_size: 2500\n  flush_interval: 100ms\n{extra}"
    );
    fs::write(dir.join(format!("{name}.yaml")), yaml).unwrap();
}

fn committed_len(dir: &Path) -> u64 {
    fs::read(dir.join("out/out.jsonl.ferry-manifest"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|m| m["length"].as_u64())
        .unwrap_or(0)
}

/// 200,000 records, SIGKILL at 8 random moments, restart each time: every
/// record arrives exactly once, in order per input file.
#[test]
fn exactly_once_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 100_000);
    write_test_input(&d.join("in/b.jsonl"), "b", 100_000);
    write_pipeline(d, "crash", "", "");
    let total_bytes = fs::metadata(d.join("in/a.jsonl")).unwrap().len() * 2;

    let mut interrupted = 0;
    for kill in 0..8 {
        kill9_mid_run(
            d,
            "crash.yaml",
            &[],
            || committed_len(d),
            total_bytes,
            (kill, 8),
        );
        let len = committed_len(d);
        if len < total_bytes {
            interrupted += 1;
        }
        eprintln!("kill {kill}: committed {len} of {total_bytes} bytes");
    }
    assert!(
        interrupted >= 4,
        "only {interrupted} of 8 kills landed mid-run: the test proves nothing"
    );

    let (status, log) = run_to_end(
        d,
        &["run", "--once", "crash.yaml"],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/out.jsonl"));
    let problems = check_exactly_once(&out, &[("a", 100_000), ("b", 100_000)]);
    assert!(problems.is_empty(), "{problems:?}");
}

/// The generator's position is its sequence number: 200,000 generated
/// records into the file sink, SIGKILL at 8 random moments, and the output
/// holds every sequence number once, in order.
#[test]
fn generate_to_file_exactly_once_across_sigkill() {
    const TOTAL: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(
        d.join("gen.yaml"),
        format!(
            "name: gen\nsource:\n  type: generate\n  count: {TOTAL}\n  template: {{\"file\": \"g\", \"seq\": \"{{{{seq}}}}\"}}\nsink:\n  type: file\n  path: out/out.jsonl\ndelivery:\n  batch_size: 2500\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
    // The next sequence number the sink's manifest has committed.
    let committed = || {
        fs::read(d.join("out/out.jsonl.ferry-manifest"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|m| m["positions"]["generate"]["offset"].as_u64())
            .unwrap_or(0)
    };
    let mut interrupted = 0;
    for kill in 0..8 {
        kill9_mid_run(d, "gen.yaml", &[], committed, TOTAL, (kill, 8));
        if committed() < TOTAL {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= 4,
        "only {interrupted} of 8 kills landed mid-run: the test proves nothing"
    );
    let (status, log) = run_to_end(d, &["run", "--once", "gen.yaml"], Duration::from_secs(120));
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/out.jsonl"));
    let problems = check_exactly_once(&out, &[("g", TOTAL)]);
    assert!(problems.is_empty(), "{problems:?}");
}

/// An input that another process keeps appending to (with lines written in
/// two halves) and rotates by renaming, while ferry is killed 8 times.
#[test]
fn exactly_once_while_input_grows_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    fs::create_dir_all(d.join("in")).unwrap();
    write_pipeline(&d, "live", "", "");
    const PER_GENERATION: u64 = 8_000;

    let writer_dir = d.clone();
    let writer = std::thread::spawn(move || {
        let live = writer_dir.join("in/live.jsonl");
        for generation in 0..3u64 {
            let tag = format!("gen{generation}");
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&live)
                .unwrap();
            for seq in 0..PER_GENERATION {
                let line = test_line(&tag, seq, 100);
                if seq % 97 == 0 {
                    // Half a line, a pause, then the rest: never read half.
                    let (a, b) = line.split_at(line.len() / 2);
                    f.write_all(a.as_bytes()).unwrap();
                    f.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                    f.write_all(b.as_bytes()).unwrap();
                } else {
                    f.write_all(line.as_bytes()).unwrap();
                }
                if seq % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(12));
                }
                if generation < 2 && seq == PER_GENERATION - 500 {
                    // Rotate: the file moves to a name that still matches the
                    // glob, and its writer still holds it for the last lines.
                    fs::rename(
                        &live,
                        writer_dir.join(format!("in/live-rotated-{generation}.jsonl")),
                    )
                    .unwrap();
                }
            }
        }
    });

    for kill in 0..8 {
        eprintln!(
            "kill {kill}: {} lines out so far, writer done: {}",
            count_lines(&d.join("out/out.jsonl")),
            writer.is_finished()
        );
        run_then_kill9(&d, "live.yaml", &[], 50..500);
    }
    assert!(
        !writer.is_finished(),
        "the writer should still be writing when the last kill lands"
    );
    writer.join().unwrap();
    let (status, log) = run_to_end(
        &d,
        &["run", "--once", "live.yaml"],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/out.jsonl"));
    let problems = check_exactly_once(
        &out,
        &[
            ("gen0", PER_GENERATION),
            ("gen1", PER_GENERATION),
            ("gen2", PER_GENERATION),
        ],
    );
    assert!(problems.is_empty(), "{problems:?}");
}

fn input_with_bad_lines(d: &Path) -> Vec<String> {
    fs::create_dir_all(d.join("in")).unwrap();
    let mut text = String::new();
    let mut bad = Vec::new();
    for seq in 0..3_000u64 {
        if seq == 1_200 || seq == 2_500 {
            let line = format!("{{\"file\":\"a\",\"seq\":{seq},broken");
            text.push_str(&line);
            text.push('\n');
            bad.push(line);
        } else if seq == 1_800 {
            let line = "[1,2,3]".to_string();
            text.push_str(&line);
            text.push('\n');
            bad.push(line);
        } else {
            text.push_str(&test_line("a", seq, 80));
        }
    }
    fs::write(d.join("in/a.jsonl"), text).unwrap();
    bad
}

#[test]
fn bad_record_with_tolerance_none_stops_and_commits_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    input_with_bad_lines(d);
    write_pipeline(d, "strict", "", "errors:\n  tolerance: none\n");
    for attempt in 0..2 {
        let (status, log) = run_to_end(
            d,
            &["run", "--once", "strict.yaml"],
            Duration::from_secs(60),
        );
        assert_eq!(status.code(), Some(1), "attempt {attempt}: {log}");
        assert!(log.contains("bad record at in/a.jsonl@"), "{log}");
        assert!(log.contains("invalid JSON"), "{log}");
        // Everything before the bad line, nothing from it on; a restart stops again at it.
        let out = read_jsonl(&d.join("out/out.jsonl"));
        let seqs: Vec<u64> = out.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (0..1_200).collect::<Vec<_>>(), "attempt {attempt}");
    }
}

#[test]
fn bad_records_with_tolerance_all_go_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad = input_with_bad_lines(d);
    write_pipeline(
        d,
        "lenient",
        "",
        "errors:\n  tolerance: all\n  dead_letter: dlq/bad.jsonl\n",
    );
    let (status, log) = run_to_end(
        d,
        &["run", "--once", "lenient.yaml"],
        Duration::from_secs(60),
    );
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/out.jsonl"));
    let good: Vec<u64> = (0..3_000)
        .filter(|s| ![1_200, 1_800, 2_500].contains(s))
        .collect();
    assert_eq!(
        out.iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        good
    );

    let dlq = read_jsonl(&d.join("dlq/bad.jsonl"));
    assert_eq!(
        dlq.iter()
            .map(|e| e["raw"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        bad
    );
    let input = fs::read_to_string(d.join("in/a.jsonl")).unwrap();
    for e in &dlq {
        assert_eq!(e["stage"], "source");
        assert_eq!(e["pipeline"], "lenient");
        assert!(!e["error"].as_str().unwrap().is_empty());
        // The position is the byte offset just past the bad line.
        let end = e["position"]["offset"].as_u64().unwrap() as usize;
        let raw = e["raw"].as_str().unwrap();
        assert_eq!(&input[end - raw.len() - 1..end - 1], raw);
        assert_eq!(e["position"]["partition"]["info"]["path"], "in/a.jsonl");
    }
    assert!(
        dlq[2]["error"]
            .as_str()
            .unwrap()
            .contains("expected a JSON object, found an array")
            || dlq[1]["error"]
                .as_str()
                .unwrap()
                .contains("expected a JSON object")
    );
    assert!(log.contains("dead-lettered 3"), "{log}");
}

/// SIGTERM: exit 0 within seconds, and a restart re-sends nothing.
#[test]
fn sigterm_commits_and_a_restart_resends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 50_000);
    write_pipeline(d, "graceful", "", "");

    // Mid-run: stop while records are flowing.
    let mut f = Ferry::start(d, &["run", "graceful.yaml"]);
    assert!(
        wait_until(Duration::from_secs(20), || count_lines(
            &d.join("out/out.jsonl")
        ) > 0),
        "{}",
        f.log_text()
    );
    f.signal(SIGTERM);
    let status = f
        .wait_for_exit(Duration::from_secs(5))
        .expect("exit within 5 s of SIGTERM");
    assert!(status.success(), "{}", f.log_text());
    // The committed length is the whole file: nothing uncommitted was left behind.
    assert_eq!(
        committed_len(d),
        fs::metadata(d.join("out/out.jsonl")).unwrap().len()
    );

    // Idle: everything delivered, then SIGTERM, then a restart sends nothing.
    let mut f = Ferry::start(d, &["run", "graceful.yaml"]);
    assert!(
        wait_until(Duration::from_secs(60), || count_lines(
            &d.join("out/out.jsonl")
        ) == 50_000),
        "{}",
        f.log_text()
    );
    f.signal(SIGTERM);
    assert!(
        f.wait_for_exit(Duration::from_secs(5))
            .expect("exit within 5 s")
            .success()
    );
    let before = fs::read(d.join("out/out.jsonl")).unwrap();
    let (status, log) = run_to_end(
        d,
        &["run", "--once", "graceful.yaml"],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{log}");
    assert!(log.contains("graceful: in 0 out 0"), "{log}");
    assert_eq!(fs::read(d.join("out/out.jsonl")).unwrap(), before);
    assert!(check_exactly_once(&read_jsonl(&d.join("out/out.jsonl")), &[("a", 50_000)]).is_empty());
}

#[test]
fn offsets_list_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 1_000);
    write_pipeline(d, "again", "", "");
    let (status, log) = run_to_end(d, &["run", "--once", "again.yaml"], Duration::from_secs(30));
    assert!(status.success(), "{log}");

    let list = ferry_output(d, &["offsets", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("again: updated"), "{text}");
    assert!(
        text.contains(&format!(
            "in/a.jsonl@{}",
            fs::metadata(d.join("in/a.jsonl")).unwrap().len()
        )),
        "{text}"
    );

    let reset = ferry_output(d, &["offsets", "reset", "again"]);
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    let (status, log) = run_to_end(d, &["run", "--once", "again.yaml"], Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(
        log.contains("starting from the positions an operator chose"),
        "{log}"
    );
    assert_eq!(
        count_lines(&d.join("out/out.jsonl")),
        2_000,
        "a reset reads the source again from the start"
    );

    let unknown = ferry_output(d, &["offsets", "reset", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
}

#[test]
fn csv_and_text_formats_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(
        d.join("in/p.csv"),
        "id,name\n1,\"Smith, J\"\n2,\"multi\nline\"\n",
    )
    .unwrap();
    fs::write(
        d.join("csv.yaml"),
        "name: csv\nsource:\n  type: file\n  path: in/p.csv\n  format: csv\nsink:\n  type: file\n  path: out/p.jsonl\n",
    )
    .unwrap();
    fs::write(
        d.join("text.yaml"),
        "name: text\nsource:\n  type: file\n  path: out/p.jsonl\n  format: text\nsink:\n  type: file\n  path: out/p.txt\n  format: text\n",
    )
    .unwrap();
    let (status, log) = run_to_end(d, &["run", "--once", "csv.yaml"], Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert_eq!(
        read_jsonl(&d.join("out/p.jsonl")),
        vec![
            json!({"id": "1", "name": "Smith, J"}),
            json!({"id": "2", "name": "multi\nline"})
        ]
    );
    let (status, log) = run_to_end(d, &["run", "--once", "text.yaml"], Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert_eq!(
        fs::read_to_string(d.join("out/p.jsonl")).unwrap(),
        fs::read_to_string(d.join("out/p.txt")).unwrap()
    );
}

#[test]
fn a_second_ferry_on_the_same_data_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 10);
    write_pipeline(d, "first", "", "");
    let f = Ferry::start(d, &["run", "first.yaml"]);
    assert!(
        wait_until(Duration::from_secs(20), || f
            .log_text()
            .contains("pipeline started")),
        "{}",
        f.log_text()
    );
    let (status, log) = run_to_end(d, &["run", "--once", "first.yaml"], Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("another ferry is already running with the data folder data"),
        "{log}"
    );
    f.signal(SIGTERM);
}

/// A kill after the first rows were written but before the first commit
/// (the window a random kill rarely hits): the restart must not keep them.
#[test]
fn sigkill_before_the_first_commit_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 20_000);
    fs::write(
        d.join("first.yaml"),
        "name: first\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out/out.jsonl\ndelivery:\n  batch_size: 1000000\n  flush_interval: 1h\n",
    )
    .unwrap();
    let mut f = Ferry::start(d, &["run", "first.yaml"]);
    assert!(
        wait_until(Duration::from_secs(30), || count_lines(
            &d.join("out/out.jsonl")
        ) >= 5_000),
        "{}",
        f.log_text()
    );
    assert_eq!(committed_len(d), 0, "nothing may be committed yet");
    f.kill9();
    let (status, log) = run_to_end(d, &["run", "--once", "first.yaml"], Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let problems = check_exactly_once(&read_jsonl(&d.join("out/out.jsonl")), &[("a", 20_000)]);
    assert!(problems.is_empty(), "{problems:?}");
}
