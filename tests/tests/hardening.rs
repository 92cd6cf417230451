//! Hostile and careless input through the real binary: records that cannot
//! complete, pipelines that would read their own output, two writers of one
//! file, names that are not UTF-8, waits that must end at shutdown, secrets
//! that must never be printed. Each test failed before its fix.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_tests::*;

const SIGTERM: i32 = libc::SIGTERM;

fn pipeline(dir: &Path, file: &str, yaml: &str) {
    fs::write(dir.join(file), yaml).unwrap();
}

fn validate(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["validate"];
    all.extend_from_slice(args);
    let out = ferry_output(dir, &all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The issue's reproduction: an unbalanced quote in row 2 used to lose the
/// rest of the file (`--once`: only row 1, exit 0, no dead letter).
#[test]
fn an_unbalanced_csv_quote_costs_only_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(d.join("in/q.csv"), "id,v\n1,a\n2,\"oops\n3,c\n4,d\n").unwrap();
    let yaml = |tolerance: &str, out: &str| {
        format!(
            "name: q-{tolerance}\nsource:\n  type: file\n  path: in/*.csv\n  format: csv\nsink:\n  type: file\n  path: {out}\nerrors:\n  tolerance: {tolerance}\n"
        )
    };
    pipeline(d, "all.yaml", &yaml("all", "out/all.jsonl"));
    let (status, log) = run_to_end(d, &["run", "--once", "all.yaml"], Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let ids: Vec<String> = read_jsonl(&d.join("out/all.jsonl"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["1", "3", "4"]);
    let dead = read_jsonl(&d.join("data/dlq/q-all.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["raw"], "2,\"oops");

    pipeline(d, "none.yaml", &yaml("none", "out/none.jsonl"));
    let (status, log) = run_to_end(d, &["run", "--once", "none.yaml"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("bad record at") && log.contains("never closes"),
        "{log}"
    );
    assert_eq!(read_jsonl(&d.join("out/none.jsonl")).len(), 1);
}

/// As a daemon the open row used to pile up to 1 MiB and then go to the
/// dead letters whole: 56,357 of 100,003 good rows lost in one run.
#[test]
fn a_daemon_loses_no_row_behind_an_unbalanced_quote() {
    const ROWS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    let mut text = String::from("id,v\n1,a\n2,\"oops\n");
    for n in 0..ROWS {
        text.push_str(&format!("{},row-{n}\n", n + 3));
    }
    fs::write(d.join("in/q.csv"), text).unwrap();
    pipeline(
        d,
        "q.yaml",
        "name: q\nsource:\n  type: file\n  path: in/*.csv\n  format: csv\n  poll_interval: 50ms\nsink:\n  type: file\n  path: out/q.jsonl\nerrors:\n  tolerance: all\ndelivery:\n  flush_interval: 100ms\n",
    );
    let mut f = Ferry::start(d, &["run", "q.yaml"]);
    let done = wait_until(Duration::from_secs(120), || {
        count_lines(&d.join("out/q.jsonl")) == ROWS + 1
    });
    f.signal(SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    assert!(
        done,
        "rows out: {}\n{}",
        count_lines(&d.join("out/q.jsonl")),
        f.log_text()
    );
    assert!(status.success(), "{}", f.log_text());
    let out = read_jsonl(&d.join("out/q.jsonl"));
    assert_eq!(out.len(), ROWS + 1);
    assert_eq!(out[ROWS]["v"], format!("row-{}", ROWS - 1));
    let dead = read_jsonl(&d.join("data/dlq/q.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["raw"], "2,\"oops");
}

#[test]
fn a_pipeline_may_not_read_what_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        (
            "loop",
            "source:\n  type: file\n  path: d/*.jsonl\nsink:\n  type: file\n  path: d/out.jsonl\n",
            "sink.path: writes",
            "which source.path (d/*.jsonl) reads",
        ),
        (
            "manifest",
            "source:\n  type: file\n  path: d/*\nsink:\n  type: file\n  path: e/../d/o.txt\n",
            "sink.path: writes",
            "reads",
        ),
        (
            "dlq-out",
            "source:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out/o.jsonl\nerrors:\n  tolerance: all\n  dead_letter: ./out/o.jsonl\n",
            "errors.dead_letter: is the same file as sink.path",
            "must be separate files",
        ),
        (
            "dlq-in",
            "source:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out/o.jsonl\nerrors:\n  tolerance: all\n  dead_letter: in/dead.jsonl\n",
            "errors.dead_letter: writes",
            "which source.path (in/*.jsonl) reads",
        ),
    ];
    for (name, body, at, says) in cases {
        pipeline(d, &format!("{name}.yaml"), &format!("name: {name}\n{body}"));
        let (code, text) = validate(d, &[&format!("{name}.yaml")]);
        assert_eq!(code, 2, "{name}: {text}");
        assert!(text.contains(at) && text.contains(says), "{name}: {text}");
        // Named with the file and line, as every config error is.
        assert!(text.contains(&format!("{name}.yaml:")), "{text}");
    }
}

#[test]
fn two_writers_of_one_output_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::create_dir_all(d.join("p")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 10);
    for name in ["one", "two"] {
        pipeline(
            &d.join("p"),
            &format!("{name}.yaml"),
            &format!(
                "name: {name}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out/shared.jsonl\n"
            ),
        );
    }
    // Two pipelines in one set of files: validate names both.
    let (code, text) = validate(d, &["p"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("p/two.yaml:") && text.contains("which pipeline one (p/one.yaml) writes too"),
        "{text}"
    );

    // One pipeline under two data folders: the second daemon is refused by
    // the lock on the output, with a message that says so.
    let mut first = Ferry::start(d, &["run", "--data-dir", "data1", "p/one.yaml"]);
    assert!(wait_until(Duration::from_secs(30), || count_lines(
        &d.join("out/shared.jsonl")
    ) == 10));
    let (status, log) = run_to_end(
        d,
        &["run", "--once", "--data-dir", "data2", "p/one.yaml"],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("is already being written by another pipeline or ferry process"),
        "{log}"
    );
    first.signal(SIGTERM);
    assert!(
        first
            .wait_for_exit(Duration::from_secs(30))
            .unwrap()
            .success()
    );
    assert_eq!(count_lines(&d.join("out/shared.jsonl")), 10);
}

#[test]
fn files_whose_names_are_not_utf8_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    let odd = d
        .join("in")
        .join(std::ffi::OsStr::from_bytes(b"f\xfe.jsonl"));
    write_test_input(&odd, "odd", 100);
    write_test_input(&d.join("in/plain.jsonl"), "plain", 100);
    pipeline(
        d,
        "u.yaml",
        "name: u\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out/u.jsonl\n",
    );
    let (status, log) = run_to_end(d, &["run", "--once", "u.yaml"], Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let out = read_jsonl(&d.join("out/u.jsonl"));
    let problems = check_exactly_once(&out, &[("odd", 100), ("plain", 100)]);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn once_names_an_unterminated_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::write(d.join("in/a.jsonl"), "{\"n\":1}\n{\"n\":2}").unwrap();
    pipeline(
        d,
        "t.yaml",
        "name: t\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out/t.jsonl\n",
    );
    let (status, log) = run_to_end(d, &["run", "--once", "t.yaml"], Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(count_lines(&d.join("out/t.jsonl")), 1);
    assert!(
        log.contains("in/a.jsonl") && log.contains("ends with 7 bytes that have no line ending"),
        "{log}"
    );
}

/// SIGTERM used to wait for the file source's poll interval (58 s of 60 s).
#[test]
fn sigterm_does_not_wait_for_a_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 10);
    pipeline(
        d,
        "slow.yaml",
        "name: slow\nsource:\n  type: file\n  path: in/*.jsonl\n  poll_interval: 24h\nsink:\n  type: file\n  path: out/s.jsonl\n",
    );
    let mut f = Ferry::start(d, &["run", "slow.yaml"]);
    assert!(wait_until(Duration::from_secs(30), || count_lines(
        &d.join("out/s.jsonl")
    ) == 10));
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    f.signal(SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(20)).expect("stops");
    assert!(status.success(), "{}", f.log_text());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}

/// Answers `GET /` as Elasticsearch 8 does, so the sink opens, and then
/// holds every other request (a bulk write) without a word.
fn elasticsearch_that_never_acknowledges() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(16).flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                loop {
                    let mut head = Vec::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        head.push(std::mem::take(&mut line));
                    }
                    if !head.first().is_some_and(|l| l.starts_with("GET / ")) {
                        // A write, or the connection closed: hold it unanswered.
                        std::thread::sleep(Duration::from_secs(120));
                        return;
                    }
                    let body =
                        r#"{"version":{"number":"8.15.0"},"tagline":"You Know, for Search"}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A sink server that opens and then never acknowledges a write: SIGTERM
/// ends ferry within the shutdown timeout, exit 1, naming the pipeline.
/// (A server silent from the first byte holds the sink's opening instead,
/// which a stop cuts short: reload's tests.)
#[test]
fn a_sink_that_never_answers_is_abandoned_at_the_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 100);
    let addr = elasticsearch_that_never_acknowledges();
    pipeline(
        d,
        "es.yaml",
        &format!(
            "name: es\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: elasticsearch\n  urls: [http://{addr}]\n  index: never\n  timeout: 24h\n"
        ),
    );
    let mut f = Ferry::start(d, &["run", "--shutdown-timeout", "2s", "es.yaml"]);
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    f.signal(SIGTERM);
    let status = f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    let took = asked.elapsed();
    let log = f.log_text();
    assert!(log.contains("Elasticsearch 8.15.0 at"), "opened: {log}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        log.contains("did not stop within the shutdown timeout (2s)"),
        "{log}"
    );
    assert!(log.contains("pipeline es failed"), "{log}");
}

/// Environment values never appear in what ferry prints: not in validate's
/// description of a URL's query, not in a malformed URI's error, not when
/// used in a path.
#[test]
fn secrets_from_the_environment_are_never_printed() {
    const PW: &str = "pa55-w0rd-xyz";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    pipeline(
        d,
        "pg.yaml",
        "name: pg\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: postgres://root@127.0.0.1:1/test?password=${PW}\n  table: t\n",
    );
    pipeline(
        d,
        "mongo.yaml",
        "name: mongo\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: mongodb\n  uri: mongodb://u:${PW}@[bad\n  database: d\n  collection: c\n",
    );
    pipeline(
        d,
        "path.yaml",
        "name: path\nsource:\n  type: file\n  path: in/${PW}/*.jsonl\nsink:\n  type: file\n  path: out/${PW}.jsonl\n",
    );
    pipeline(
        d,
        "kafka.yaml",
        "name: kafka\nsource:\n  type: kafka\n  brokers: 127.0.0.1:1\n  topics: [t]\n  group_id: g\n  options:\n    security.protocol: sasl_plaintext\n    sasl.mechanism: PLAIN\n    sasl.username: u\n    sasl.password: ${PW}\nsink:\n  type: file\n  path: out/k.jsonl\n",
    );
    pipeline(
        d,
        "es.yaml",
        "name: es\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: elasticsearch\n  urls: [http://elastic:${PW}@127.0.0.1:1]\n  index: i-${PW}\n",
    );
    let env = [("PW", PW)];
    let mut printed = String::new();
    for args in [
        vec!["validate", "pg.yaml", "path.yaml", "kafka.yaml", "es.yaml"],
        vec!["validate", "mongo.yaml"],
        vec![
            "validate",
            "--check-connections",
            "pg.yaml",
            "path.yaml",
            "kafka.yaml",
            "es.yaml",
        ],
    ] {
        let out = std::process::Command::new(ferry_bin())
            .args(&args)
            .current_dir(d)
            .envs(env)
            .output()
            .unwrap();
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // Running: the server is unreachable (retried until stopped), the URI
    // is malformed, the path holds the value.
    for file in [
        "pg.yaml",
        "mongo.yaml",
        "path.yaml",
        "kafka.yaml",
        "es.yaml",
    ] {
        let mut f = Ferry::start_with_env(d, &["run", "--once", file], &env);
        if f.wait_for_exit(Duration::from_secs(3)).is_none() {
            f.signal(SIGTERM);
            f.wait_for_exit(Duration::from_secs(40)).expect("stops");
        }
        printed.push_str(&f.log_text());
    }
    assert!(!printed.contains(PW), "{printed}");
    assert!(printed.contains("***"), "{printed}");
}

/// What the check at load time cannot see — a symbolic link to the output,
/// the default dead-letter file under a broad glob, a working folder whose
/// name holds glob characters — is caught before anything is read.
#[test]
fn a_pipeline_reading_its_output_through_a_link_or_its_default_dead_letters_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("out")).unwrap();
    fs::write(d.join("out/seed.jsonl"), "{\"a\":1}\n").unwrap();
    std::os::unix::fs::symlink("out", d.join("link")).unwrap();
    pipeline(
        d,
        "link.yaml",
        "name: link\nsource:\n  type: file\n  path: link/*.jsonl\nsink:\n  type: file\n  path: out/o.jsonl\n",
    );
    let (status, log) = run_to_end(d, &["run", "--once", "link.yaml"], Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("written by this pipeline: it would read its own output back"),
        "{log}"
    );
    assert!(
        count_lines(&d.join("out/o.jsonl")) <= 1,
        "it read its own output"
    );

    pipeline(
        d,
        "deep.yaml",
        "name: deep\nsource:\n  type: file\n  path: \"**/*.jsonl\"\nsink:\n  type: file\n  path: x/o.txt\n  format: text\nerrors:\n  tolerance: all\n",
    );
    let (status, log) = run_to_end(d, &["run", "--once", "deep.yaml"], Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("its default dead-letter file"), "{log}");

    // A working folder named like a glob: its name is matched literally.
    let odd = d.join("br[1]");
    fs::create_dir_all(odd.join("out")).unwrap();
    pipeline(
        &odd,
        "loop.yaml",
        "name: loop\nsource:\n  type: file\n  path: out/*.jsonl\nsink:\n  type: file\n  path: out/o.jsonl\n",
    );
    let (code, text) = validate(&odd, &["loop.yaml"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("which source.path (out/*.jsonl) reads"),
        "{text}"
    );
}

#[test]
fn a_pipeline_name_or_a_literal_url_password_is_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline(
        d,
        "a.yaml",
        "name: ${S_NAME}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: postgres://root:lit/pw2@127.0.0.1:1/test?password=literalpw1\n  table: t\n",
    );
    let out = std::process::Command::new(ferry_bin())
        .args(["validate", "a.yaml"])
        .current_dir(d)
        .env("S_NAME", "topsecretname")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    for secret in ["topsecretname", "lit/pw2", "literalpw1"] {
        assert!(!printed.contains(secret), "{secret}: {printed}");
    }
}

#[test]
fn an_option_librdkafka_does_not_know_is_refused_at_validate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline(
        d,
        "k.yaml",
        "name: k\nsource:\n  type: kafka\n  brokers: 127.0.0.1:9092\n  topics: [t]\n  group_id: g\n  options:\n    no.such.option: x\n    fetch.wait.max.ms: often\nsink:\n  type: file\n  path: out.jsonl\n",
    );
    let (code, text) = validate(d, &["k.yaml"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("k.yaml:8:21: source.options.no.such.option: librdkafka refuses it: No such configuration property"), "{text}");
    assert!(
        text.contains("source.options.fetch.wait.max.ms: librdkafka refuses it"),
        "{text}"
    );
}

/// Input that is not UTF-8 is dead-lettered with its bytes as they came
/// (`raw_base64`), not a lossy `raw` with U+FFFD in place of each bad byte:
/// a dead letter can be replayed. Text stays under `raw`.
#[test]
fn a_dead_letter_keeps_the_bytes_of_input_that_is_not_text() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    let binary: &[u8] = b"{\"v\": \"\xff\xfe\x00latin-1 \xe9\"}";
    let mut input = b"{\"v\": 1}\n".to_vec();
    input.extend_from_slice(binary);
    input.extend_from_slice(b"\nnot json\n{\"v\": 2}\n");
    fs::write(d.join("in/b.jsonl"), input).unwrap();
    pipeline(
        d,
        "b.yaml",
        "name: b\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out/b.jsonl\nerrors:\n  tolerance: all\n",
    );
    let (status, log) = run_to_end(d, &["run", "--once", "b.yaml"], Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(count_lines(&d.join("out/b.jsonl")), 2);
    let dead = read_jsonl(&d.join("data/dlq/b.jsonl"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(dead[0]["raw_base64"].as_str().expect("raw_base64"))
        .unwrap();
    assert_eq!(bytes, binary, "{dead:?}");
    assert!(dead[0].get("raw").is_none(), "{dead:?}");
    assert_eq!(dead[1]["raw"], "not json", "{dead:?}");
}
