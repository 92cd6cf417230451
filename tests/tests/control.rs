//! Steering a running ferry: `ferry pause|resume|restart|status` and
//! `ferry offsets reset` while it runs, through its admin API.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ferry_tests::*;

fn pipeline(name: &str) -> String {
    format!(
        "name: {name}\nsource:\n  type: file\n  path: in/*.jsonl\n  poll_interval: 50ms\nsink:\n  type: file\n  path: out/{name}.jsonl\ndelivery:\n  flush_interval: 100ms\n"
    )
}

/// `ferry ARGS…` in `dir`: (exit code, stdout, stderr).
fn ferry(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = ferry_output(dir, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn state_of(dir: &Path, name: &str) -> String {
    let (_, out, _) = ferry(dir, &["status"]);
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string()
}

fn wait_state(f: &Ferry, dir: &Path, name: &str, state: &str) {
    assert!(
        wait_until(Duration::from_secs(20), || state_of(dir, name) == state),
        "{name} never {state} (now {}): {}",
        state_of(dir, name),
        f.log_text()
    );
}

#[test]
fn a_pause_holds_across_a_restart_of_ferry_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 10);
    fs::write(d.join("p.yaml"), pipeline("p")).unwrap();
    let out = d.join("out/p.jsonl");
    let mut f = Ferry::start(d, &["run", "p.yaml"]);
    assert!(
        wait_until(Duration::from_secs(20), || lines_in(&out) == 10),
        "{}",
        f.log_text()
    );

    let (code, said, err) = ferry(d, &["pause", "p"]);
    assert_eq!(code, 0, "{err}");
    assert!(said.starts_with("p: pausing"), "{said}");
    wait_state(&f, d, "p", "paused");
    append_test_input(&d.join("in/a.jsonl"), "a", 10, 15);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(lines_in(&out), 10, "a paused pipeline reads nothing");
    f.stop();

    let mut f = Ferry::start(d, &["run", "p.yaml"]);
    wait_state(&f, d, "p", "paused");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines_in(&out), 10, "still paused after a restart of ferry");
    let (code, said, err) = ferry(d, &["resume", "p"]);
    assert_eq!(code, 0, "{err}");
    assert!(said.starts_with("p: resuming"), "{said}");
    assert!(
        wait_until(Duration::from_secs(20), || lines_in(&out) == 15),
        "{}",
        f.log_text()
    );
    f.stop();
    let problems = check_exactly_once(&read_jsonl(&out), &[("a", 15)]);
    assert!(problems.is_empty(), "{problems:?}");

    // Unknown names are said so.
    let mut f = Ferry::start(d, &["run", "p.yaml"]);
    wait_state(&f, d, "p", "running");
    let (code, _, err) = ferry(d, &["pause", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains(r#"no pipeline named "nope""#), "{err}");
    f.stop();
}

#[test]
fn offsets_reset_while_running_reads_the_source_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 10);
    fs::write(d.join("p.yaml"), pipeline("r")).unwrap();
    let out = d.join("out/r.jsonl");
    let mut f = Ferry::start(d, &["run", "p.yaml"]);
    assert!(
        wait_until(Duration::from_secs(20), || lines_in(&out) == 10),
        "{}",
        f.log_text()
    );
    let (code, said, err) = ferry(d, &["offsets", "reset", "r"]);
    assert_eq!(code, 0, "{err}");
    assert!(said.contains("offsets reset"), "{said}");
    // Read again from the beginning: each record a second time.
    assert!(
        wait_until(Duration::from_secs(20), || lines_in(&out) == 20),
        "{}",
        f.log_text()
    );
    wait_state(&f, d, "r", "running");
    f.stop();
}

#[test]
fn a_failed_pipeline_stays_failed_until_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 20);
    let table = format!("control_restart_{}", fastrand::u32(..));
    psql_at(&pg_url(), &format!("DROP TABLE IF EXISTS {table}"));
    fs::write(
        d.join("pg.yaml"),
        format!(
            "name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: {}\n  table: {table}\n",
            pg_url()
        ),
    )
    .unwrap();
    let mut f = Ferry::start(d, &["run", "pg.yaml"]);
    wait_state(&f, d, &table, "failed");
    let (_, status, _) = ferry(d, &["status"]);
    assert!(status.contains("does not exist"), "{status}");
    psql_at(
        &pg_url(),
        &format!("CREATE TABLE {table} (file text, seq bigint, pad text)"),
    );
    let (code, said, err) = ferry(d, &["restart", &table]);
    assert_eq!(code, 0, "{err}");
    assert!(said.contains("started again"), "{said}");
    let count = || {
        psql_at(
            &pg_url(),
            &format!("SELECT count(DISTINCT seq) FROM {table}"),
        )
    };
    assert!(
        wait_until(Duration::from_secs(20), || count() == "20"),
        "{}",
        f.log_text()
    );
    f.stop();
    psql_at(&pg_url(), &format!("DROP TABLE IF EXISTS {table}"));
}

#[test]
fn a_busy_default_api_port_moves_to_a_free_one_and_a_busy_chosen_port_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(d.join("p.yaml"), pipeline("p")).unwrap();
    // Held here, or by whatever else holds it: busy either way.
    let _default = std::net::TcpListener::bind("127.0.0.1:8083");
    let mut f = Ferry::start_with_env(d, &["run", "p.yaml"], &[("FERRY_API", "127.0.0.1:8083")]);
    // Until ferry notes its address, `ferry status` would ask the holder
    // of the default port.
    assert!(wait_until(Duration::from_secs(20), || d
        .join("data/api.addr")
        .exists()));
    wait_state(&f, d, "p", "running");
    let addr = fs::read_to_string(d.join("data/api.addr")).unwrap();
    assert_ne!(addr.trim(), "127.0.0.1:8083");
    assert!(
        f.log_text().contains(
            "the admin API's port 127.0.0.1:8083 is in use: listening on a free port instead"
        ),
        "{}",
        f.log_text()
    );
    f.stop();

    // A port asked for by name is not silently replaced.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let (status, log) = run_to_end(
        d,
        &["run", "--api", &port, "p.yaml"],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("the admin API on {port}")), "{log}");
}
