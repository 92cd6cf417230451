//! ferry under a service manager: systemd's notify protocol (on a socket
//! given as NOTIFY_SOCKET: no systemd needed), JSON logs, quiet progress
//! lines, shell completions, the schema of pipeline files.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use ferry_tests::*;
use libc::SIGTERM;

fn pipeline(out: &str, extra: &str) -> String {
    format!(
        "name: p\nsource:\n  type: file\n  path: in/*.jsonl\n  poll_interval: 50ms\nsink:\n  type: file\n  path: {out}\ndelivery:\n  flush_interval: 100ms\n{extra}"
    )
}

/// The messages received until `until` is among them (or 20 s pass).
fn receive_until(socket: &UnixDatagram, got: &mut Vec<String>, until: &str) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = message.lines().any(|l| l == until);
            got.push(message);
            if done {
                return true;
            }
        }
    }
    false
}

#[test]
fn systemd_hears_ready_reloading_stopping_and_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::create_dir_all(d.join("conf")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 10);
    fs::write(d.join("conf/p.yaml"), pipeline("out.jsonl", "")).unwrap();
    let path = d.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify = path.to_str().unwrap();
    let mut f = Ferry::start_with_env(
        d,
        &["run", "conf"],
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")],
    );
    let mut got = Vec::new();
    assert!(
        receive_until(&socket, &mut got, "READY=1"),
        "{got:?} {}",
        f.log_text()
    );
    // Ready once the pipelines are started, not before.
    assert!(
        f.log_text().contains("reload: pipeline added"),
        "{}",
        f.log_text()
    );

    fs::write(
        d.join("conf/p.yaml"),
        pipeline("out.jsonl", "  batch_size: 500\n"),
    )
    .unwrap();
    assert!(receive_until(&socket, &mut got, "RELOADING=1"), "{got:?}");
    let reloading = got.last().unwrap().clone();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(receive_until(&socket, &mut got, "READY=1"), "{got:?}");
    assert!(receive_until(&socket, &mut got, "WATCHDOG=1"), "{got:?}");

    f.signal(SIGTERM);
    assert!(receive_until(&socket, &mut got, "STOPPING=1"), "{got:?}");
    assert!(
        f.wait_for_exit(Duration::from_secs(20))
            .expect("stops")
            .success()
    );
}

#[test]
fn json_logs_and_an_idle_pipeline_stays_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 10);
    fs::write(d.join("p.yaml"), pipeline("out.jsonl", "")).unwrap();
    let mut f = Ferry::start(
        d,
        &[
            "run",
            "--log-format",
            "json",
            "--progress-interval",
            "200ms",
            "p.yaml",
        ],
    );
    let out = d.join("out.jsonl");
    assert!(
        wait_until(Duration::from_secs(20), || out.exists()
            && count_lines(&out) == 10),
        "{}",
        f.log_text()
    );
    // Idle for many progress intervals: at most the line that saw the
    // records arrive, then nothing.
    std::thread::sleep(Duration::from_secs(2));
    let progress = |log: &str| log.lines().filter(|l| l.contains("records/s")).count();
    let idle = progress(&f.log_text());
    assert!(idle <= 2, "{}", f.log_text());
    f.signal(SIGTERM);
    assert!(
        f.wait_for_exit(Duration::from_secs(20))
            .expect("stops")
            .success()
    );
    let log = f.log_text();
    // One more line at exit.
    assert_eq!(progress(&log), idle + 1, "{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn shell_completions_name_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = ferry_output(dir.path(), &["completions", shell]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("validate") && text.contains("offsets"),
            "{shell}: {text}"
        );
    }
}

#[test]
fn ferry_schema_prints_the_committed_schema() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry_output(dir.path(), &["schema"]);
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let committed = fs::read_to_string(workspace_root().join("configs/pipeline.schema.json"))
        .expect("configs/pipeline.schema.json");
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(printed, committed);
    let kinds = &printed["properties"]["sink"]["properties"]["type"]["enum"];
    assert_eq!(
        kinds,
        &serde_json::json!(["file", "postgres", "kafka", "mongodb", "elasticsearch"])
    );
}
