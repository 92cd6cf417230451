//! Elasticsearch sink against both ES-API servers `scripts/services`
//! installs and starts (noida-db on 127.0.0.1:19200 and osmem-server on
//! 127.0.0.1:19201; ES_URL and OSMEM_URL override): no real Elasticsearch
//! can be had here, and running each test on both catches what one lets
//! through. No server is a failure, not a skip.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_tests::*;

/// A fresh index per test and server: tests run in any order.
fn index(what: &str) -> String {
    format!("ferry-{what}-{}", fastrand::u32(..))
}

fn drop_index(base: &str, index: &str) {
    http(base, "DELETE", &format!("/{index}"), None);
}

fn es_config(d: &Path, name: &str, url: &str, index: &str, extra: &str) {
    fs::write(
        d.join(format!("{name}.yaml")),
        format!(
            "name: {name}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: elasticsearch\n  urls: [{url}]\n  index: {index}\n{extra}delivery:\n  batch_size: 2000\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
}

/// file → Elasticsearch, 100,000 records with ids from their positions,
/// ferry SIGKILLed 8 times at random points: `_count` is 100,000 after
/// `_refresh` and every record is there once — on both servers.
#[test]
fn file_to_elasticsearch_exactly_once_across_sigkill() {
    const N: u64 = 100_000;
    for (server, url) in es_servers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let idx = index("crash");
        fs::create_dir_all(d.join("in")).unwrap();
        write_test_input(&d.join("in/a.jsonl"), "a", N);
        es_config(d, "es", &url, &idx, "");
        // Counted at most every 250 ms, and never more than a fifth of the
        // server's time: a count is a refresh and a scan, and noida-db's
        // took 1.8 s at 79,000 documents under load, so counting back to
        // back starved the very bulk requests it waited for.
        let last = std::cell::Cell::new((std::time::Instant::now(), Duration::ZERO, 0u64));
        let progress = || {
            let (at, took, n) = last.get();
            if at.elapsed() < Duration::from_millis(250).max(took * 4) {
                return n;
            }
            let started = std::time::Instant::now();
            let n = es_count(&url, &idx);
            last.set((std::time::Instant::now(), started.elapsed(), n));
            n
        };
        for kill in 0..8 {
            kill9_mid_run(d, "es.yaml", &[], progress, N, (kill, 8));
            eprintln!("{server}: kill {kill}: {} documents", progress());
        }
        let (status, log) = run_to_end(d, &["run", "--once", "es.yaml"], Duration::from_secs(600));
        assert!(status.success(), "{server}: {log}");
        assert_eq!(es_count(&url, &idx), N, "{server}: _count");
        let seqs = es_seqs(&url, &idx);
        assert!(
            seqs == (0..N).collect::<Vec<_>>(),
            "{server}: {} documents, first gap or repeat near {:?}",
            seqs.len(),
            seqs.windows(2).find(|w| w[1] != w[0] + 1)
        );
        drop_index(&url, &idx);
    }
}

/// Documents that break the index's mapping (`amount` is an integer; some
/// records carry a word), with both tolerance settings: with `all` the
/// dead-letter file holds exactly those, each with the server's reason, and
/// every other document arrives; with `none` the pipeline stops naming the
/// record's position.
#[test]
fn documents_that_break_the_mapping_with_both_tolerances() {
    let bad: [u64; 3] = [7, 250, 611];
    for (server, url) in es_servers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("in")).unwrap();
        let mut input = String::new();
        for seq in 0..1000u64 {
            let amount = if bad.contains(&seq) {
                "\"lots\"".to_string()
            } else {
                seq.to_string()
            };
            input.push_str(&format!(
                "{{\"file\": \"m\", \"seq\": {seq}, \"amount\": {amount}}}\n"
            ));
        }
        fs::write(d.join("in/m.jsonl"), input).unwrap();
        for tolerance in ["all", "none"] {
            let idx = index(&format!("mapping-{tolerance}"));
            let (status, body) = http(
                &url,
                "PUT",
                &format!("/{idx}"),
                Some(
                    r#"{"mappings": {"properties": {"seq": {"type": "long"}, "amount": {"type": "integer"}, "file": {"type": "keyword"}}}}"#,
                ),
            );
            assert_eq!(status, 200, "{server}: creating {idx}: {body}");
            let errors = if tolerance == "all" {
                "errors:\n  tolerance: all\n  dead_letter: dlq.jsonl\n"
            } else {
                "errors:\n  tolerance: none\n"
            };
            es_config(d, "m", &url, &idx, "");
            let yaml = fs::read_to_string(d.join("m.yaml")).unwrap() + errors;
            fs::write(d.join("m.yaml"), yaml).unwrap();
            let _ = fs::remove_dir_all(d.join("data"));
            let (status, log) =
                run_to_end(d, &["run", "--once", "m.yaml"], Duration::from_secs(120));
            if tolerance == "all" {
                assert!(status.success(), "{server}: {log}");
                assert_eq!(es_count(&url, &idx), 997, "{server}");
                let dead = read_jsonl(&d.join("dlq.jsonl"));
                let seqs: Vec<u64> = dead
                    .iter()
                    .map(|e| e["record"]["seq"].as_u64().expect("seq"))
                    .collect();
                assert_eq!(seqs, bad, "{server}: {dead:?}");
                for e in &dead {
                    let text = e.to_string();
                    assert!(
                        text.contains("400") && text.contains("amount"),
                        "{server}: the server's reason: {text}"
                    );
                    assert!(
                        text.contains("m.jsonl@"),
                        "{server}: the record's position: {text}"
                    );
                }
            } else {
                assert!(!status.success(), "{server}: must stop: {log}");
                assert!(
                    log.contains("bad record at") && log.contains("m.jsonl"),
                    "{server}: {log}"
                );
            }
            drop_index(&url, &idx);
        }
    }
}

/// What the fault proxy did.
#[derive(Default)]
struct Faults {
    requests: AtomicU64,
    too_many: AtomicU64,
    unavailable: AtomicU64,
    dropped: AtomicU64,
    /// Bulk requests of which only the first half was forwarded, the rest
    /// answered as 429 items.
    split: AtomicU64,
    unauthorized: AtomicU64,
}

/// Reads one HTTP request (head and `Content-Length` body) from `s`.
fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let (_, headers, _) = parse_http(&raw[..end + 4])?;
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return Some(raw);
            }
        }
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn respond(s: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)
}

/// Forwards one request to `upstream` (as HTTP/1.0, so the answer is
/// plain and the connection closes) and returns the answer's status line
/// and body.
fn forward(upstream: &str, request: &[u8]) -> Option<(String, Vec<u8>)> {
    let (line, headers, body) = parse_http(request)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?, parts.next()?);
    let mut up = TcpStream::connect(upstream).ok()?;
    let mut head = format!("{method} {path} HTTP/1.0\r\n");
    for (k, v) in &headers {
        // Without accept-encoding the answer comes back uncompressed, as
        // the proxy passes it on without its content-encoding.
        if ![
            "connection",
            "transfer-encoding",
            "content-length",
            "accept-encoding",
        ]
        .contains(&k.as_str())
        {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!(
        "connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    up.write_all(head.as_bytes()).ok()?;
    up.write_all(&body).ok()?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).ok()?;
    let (status, _, body) = parse_http(&raw)?;
    Some((status.split_once(' ')?.1.to_string(), body))
}

/// [`forward`], a bulk request only after `delay`.
fn forward_after(
    upstream: &str,
    request: &[u8],
    bulk: bool,
    delay: Duration,
) -> Option<(String, Vec<u8>)> {
    if bulk {
        std::thread::sleep(delay);
    }
    forward(upstream, request)
}

/// Forwards the first half of a bulk request's documents and answers the
/// others as 429 items, as a cluster whose write queues are full does.
fn forward_half(upstream: &str, request: &[u8]) -> Option<(String, Vec<u8>)> {
    let (line, headers, body) = parse_http(request)?;
    let text = String::from_utf8(body).ok()?;
    // index, create and update actions: an action line and a source line.
    let lines: Vec<&str> = text.lines().collect();
    let pairs: Vec<&[&str]> = lines.chunks(2).collect();
    let keep = pairs.len().div_ceil(2);
    let mut half = String::new();
    for pair in &pairs[..keep] {
        half.push_str(&pair.join("\n"));
        half.push('\n');
    }
    let mut raw = format!("{line}\r\n");
    for (k, v) in &headers {
        if k != "content-length" {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    raw.push_str(&format!("content-length: {}\r\n\r\n{half}", half.len()));
    let (status, answer) = forward(upstream, raw.as_bytes())?;
    let mut answer: serde_json::Value = serde_json::from_slice(&answer).ok()?;
    let items = answer["items"].as_array_mut()?;
    for pair in &pairs[keep..] {
        let action: serde_json::Value = serde_json::from_str(pair[0]).ok()?;
        let (name, meta) = action.as_object()?.iter().next()?;
        items.push(serde_json::json!({ name: {
            "_index": meta["_index"], "_id": meta["_id"], "status": 429,
            "error": {"type": "es_rejected_execution_exception", "reason": "split by the fault proxy"}
        }}));
    }
    answer["errors"] = serde_json::Value::Bool(true);
    Some((status, answer.to_string().into_bytes()))
}

/// An HTTP proxy in front of a server that misbehaves on a schedule: of its
/// first `faulty` requests it answers every fourth with 429, the next with
/// 503, drops the connection of the next without answering, and forwards
/// the fourth; then it answers 503 to the next `outage` requests in a row
/// (longer than the sink retries by itself); then it forwards only half of
/// the documents of the next `split` requests and answers the others as 429
/// items; then it forwards everything, each bulk request after `delay`.
/// With `auth`, a request without that `Authorization` header gets 401.
/// What the proxy does; see [`fault_proxy`].
#[derive(Default, Clone, Copy)]
struct Schedule {
    faulty: u64,
    outage: u64,
    split: u64,
    /// Held before forwarding each bulk request: a slow cluster.
    delay: Duration,
    auth: Option<&'static str>,
}

fn fault_proxy(upstream: String, schedule: Schedule) -> (String, Arc<Faults>) {
    let Schedule {
        faulty,
        outage,
        split,
        delay,
        auth,
    } = schedule;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let faults = Arc::new(Faults::default());
    let stats = faults.clone();
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let (faults, upstream) = (faults.clone(), upstream.clone());
            std::thread::spawn(move || {
                while let Some(request) = read_request(&mut s) {
                    if let Some(expected) = auth {
                        let (_, headers, _) = parse_http(&request).unwrap_or_default();
                        if !headers
                            .iter()
                            .any(|(k, v)| k == "authorization" && v == expected)
                        {
                            faults.unauthorized.fetch_add(1, Ordering::SeqCst);
                            let body = br#"{"error":{"type":"security_exception","reason":"unable to authenticate user"},"status":401}"#;
                            if respond(&mut s, "401 Unauthorized", body).is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    // The schedule counts bulk requests only: the sink
                    // also asks `GET /` when it opens.
                    let bulk = request.starts_with(b"POST /_bulk");
                    let n = if bulk {
                        faults.requests.fetch_add(1, Ordering::SeqCst)
                    } else {
                        0
                    };
                    let fault = if !bulk {
                        None
                    } else if n < faulty {
                        Some(n % 4)
                    } else if n < faulty + outage {
                        Some(1)
                    } else if n < faulty + outage + split {
                        Some(5)
                    } else {
                        None
                    };
                    let answered = match fault {
                        Some(0) => {
                            faults.too_many.fetch_add(1, Ordering::SeqCst);
                            respond(&mut s, "429 Too Many Requests", br#"{"error":{"type":"es_rejected_execution_exception","reason":"rejected by the fault proxy"},"status":429}"#)
                        }
                        Some(1) => {
                            faults.unavailable.fetch_add(1, Ordering::SeqCst);
                            respond(&mut s, "503 Service Unavailable", br#"{"error":{"type":"unavailable_shards_exception","reason":"unavailable by the fault proxy"},"status":503}"#)
                        }
                        Some(2) => {
                            faults.dropped.fetch_add(1, Ordering::SeqCst);
                            let _ = s.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        Some(5) => {
                            faults.split.fetch_add(1, Ordering::SeqCst);
                            match forward_half(&upstream, &request) {
                                Some((status, body)) => respond(&mut s, &status, &body),
                                None => return,
                            }
                        }
                        _ => match forward_after(&upstream, &request, bulk, delay) {
                            Some((status, body)) => respond(&mut s, &status, &body),
                            None => return,
                        },
                    };
                    if answered.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), stats)
}

/// file → fault proxy → Elasticsearch: 429s, 503s and dropped connections
/// for a while, then an outage longer than the sink's own retries, then
/// answers where half of the documents come back as 429 items: nothing
/// lost, nothing duplicated, and the log reports the retries and the
/// pipeline starting again — on both servers.
#[test]
fn retries_through_429_503_and_dropped_connections() {
    const N: u64 = 20_000;
    for (server, url) in es_servers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let idx = index("faults");
        fs::create_dir_all(d.join("in")).unwrap();
        write_test_input(&d.join("in/a.jsonl"), "a", N);
        let (proxy, faults) = fault_proxy(
            url.clone(),
            Schedule {
                faulty: 24,
                outage: 12,
                split: 6,
                ..Schedule::default()
            },
        );
        es_config(
            d,
            "f",
            &proxy,
            &idx,
            "  bulk: {max_actions: 500}\n  retry: {max_retries: 4, initial_backoff: 20ms, max_backoff: 200ms}\n",
        );
        let yaml = fs::read_to_string(d.join("f.yaml")).unwrap()
            + "errors:\n  retry_backoff: 100ms\n  retry_backoff_max: 500ms\n";
        fs::write(d.join("f.yaml"), yaml).unwrap();
        let (status, log) = run_to_end(d, &["run", "--once", "f.yaml"], Duration::from_secs(300));
        assert!(status.success(), "{server}: {log}");
        let (t, u, x) = (
            faults.too_many.load(Ordering::SeqCst),
            faults.unavailable.load(Ordering::SeqCst),
            faults.dropped.load(Ordering::SeqCst),
        );
        eprintln!(
            "{server}: the proxy answered 429 {t} times, 503 {u} times, dropped {x} connections"
        );
        let halves = faults.split.load(Ordering::SeqCst);
        eprintln!("{server}: and forwarded only half of {halves} bulk requests");
        assert!(
            t >= 6 && u >= 12 && x >= 6 && halves >= 6,
            "{server}: the faults happened"
        );
        assert!(
            log.contains("documents not taken (429 es_rejected_execution_exception"),
            "{server}: item retries reported: {log}"
        );
        assert!(
            log.contains("retry 1 of 4"),
            "{server}: retries reported: {log}"
        );
        assert!(
            log.contains("starting again from the committed positions"),
            "{server}: {log}"
        );
        // Every request the sink sent again counts in the pipeline's
        // `retries`, beside the restarts.
        let retries: u64 = log
            .lines()
            .rfind(|l| l.contains(" f: in "))
            .and_then(|l| l.split("retries ").nth(1))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(retries >= t + u + x, "{server}: retries {retries}: {log}");
        assert_eq!(es_count(&url, &idx), N, "{server}: _count");
        assert!(
            es_seqs(&url, &idx) == (0..N).collect::<Vec<_>>(),
            "{server}: each record once"
        );
        drop_index(&url, &idx);
    }
}

/// `validate --check-connections`: a cluster that answers passes; one that
/// does not is named; an existing index whose mapping makes the id field an
/// object is refused — on both servers.
#[test]
fn validate_checks_the_cluster_and_the_mapping() {
    for (server, url) in es_servers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let idx = index("check");
        let (status, body) = http(
            &url,
            "PUT",
            &format!("/{idx}"),
            Some(r#"{"mappings": {"properties": {"customer": {"type": "object"}}}}"#),
        );
        assert_eq!(status, 200, "{server}: {body}");
        let write = |name: &str, url: &str, index: &str, id: &str| {
            fs::write(
                d.join(format!("{name}.yaml")),
                format!(
                    "name: {name}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: elasticsearch\n  urls: [{url}]\n  index: {index}\n  id: {id}\n"
                ),
            )
            .unwrap();
        };
        write("good", &url, &idx, "position");
        write("fresh", &url, "not-there-yet", "position");
        write("down", "http://127.0.0.1:9", &idx, "position");
        write("objectid", &url, &idx, "{field: customer}");
        // A path below the server's root: every request would go below it.
        write("path", &format!("{url}/nope"), &idx, "position");
        // Something that answers HTTP, but not as Elasticsearch does.
        write("other", &not_elasticsearch(), &idx, "position");
        let out = ferry_output(d, &["validate", "--check-connections", "."]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{server}: {stderr}");
        assert!(
            stderr.contains("error: ./down.yaml: pipeline down: sink (elasticsearch): no answer from Elasticsearch at http://127.0.0.1:9"),
            "{server}: {stderr}"
        );
        assert!(
            stderr.contains("maps `customer` (the id field) as object"),
            "{server}: {stderr}"
        );
        assert!(
            !stderr.contains("good.yaml") && !stderr.contains("fresh.yaml"),
            "{server}: {stderr}"
        );
        assert!(
            stderr.contains("./path.yaml: pipeline path: sink (elasticsearch):")
                && stderr.contains("a path in the URL is a prefix of every request"),
            "{server}: {stderr}"
        );
        assert!(
            stderr.contains("./other.yaml: pipeline other: sink (elasticsearch):")
                && stderr.contains("without a version.number"),
            "{server}: {stderr}"
        );
        assert!(
            stderr.contains("4 connection problem(s)"),
            "{server}: {stderr}"
        );
        // `run` asks the same question before writing: the same answer
        // (though the servers take `POST /nope/_bulk`, `nope` read as a
        // default index).
        fs::create_dir_all(d.join("in")).unwrap();
        write_test_input(&d.join("in/a.jsonl"), "a", 10);
        for (name, says) in [
            ("path", "a path in the URL"),
            ("other", "without a version.number"),
        ] {
            let (status, log) = run_to_end(
                d,
                &["run", "--once", &format!("{name}.yaml")],
                Duration::from_secs(30),
            );
            assert!(
                !status.success() && log.contains(says),
                "{server}: {name}: {log}"
            );
        }
        drop_index(&url, &idx);
    }
}

/// An HTTP server that answers every request with 200 and `{}`.
fn not_elasticsearch() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                while read_request(&mut s).is_some() {
                    if respond(&mut s, "200 OK", b"{}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// `auth: {username, password: ${ENV}}` reaches the cluster as Basic
/// credentials (a proxy in front of each server checks them) and the
/// password never shows in the log; a wrong one stops the pipeline with a
/// 401 that points at `auth`.
#[test]
fn credentials_reach_the_cluster_and_are_never_logged() {
    for (server, url) in es_servers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let idx = index("auth");
        fs::create_dir_all(d.join("in")).unwrap();
        write_test_input(&d.join("in/a.jsonl"), "a", 1000);
        // base64("elastic:s3cret-test")
        let (proxy, faults) = fault_proxy(
            url.clone(),
            Schedule {
                auth: Some("Basic ZWxhc3RpYzpzM2NyZXQtdGVzdA=="),
                ..Schedule::default()
            },
        );
        es_config(
            d,
            "a",
            &proxy,
            &idx,
            "  auth:\n    username: elastic\n    password: ${ES_TEST_PASSWORD}\n",
        );
        for (password, works) in [("wrong-password", false), ("s3cret-test", true)] {
            let mut f = Ferry::start_with_env(
                d,
                &["run", "--once", "a.yaml"],
                &[("ES_TEST_PASSWORD", password)],
            );
            let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
            let log = f.log_text();
            assert!(
                !log.contains(password),
                "{server}: the password leaked: {log}"
            );
            if works {
                assert!(status.success(), "{server}: {log}");
            } else {
                assert!(!status.success(), "{server}: must stop: {log}");
                assert!(log.contains("401 (check `auth`)"), "{server}: {log}");
            }
        }
        assert!(faults.unauthorized.load(Ordering::SeqCst) >= 1, "{server}");
        assert_eq!(es_count(&url, &idx), 1000, "{server}");
        drop_index(&url, &idx);

        // An API key (the encoded `id:key` Elasticsearch hands out) goes
        // into the header as it is.
        let (proxy, _) = fault_proxy(
            url.clone(),
            Schedule {
                auth: Some("ApiKey Zm9vOmJhcg=="),
                ..Schedule::default()
            },
        );
        es_config(
            d,
            "k",
            &proxy,
            &idx,
            "  auth:\n    api_key: ${ES_TEST_KEY}\n",
        );
        let mut f = Ferry::start_with_env(
            d,
            &["run", "--once", "k.yaml"],
            &[("ES_TEST_KEY", "Zm9vOmJhcg==")],
        );
        let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
        assert!(status.success(), "{server}: {}", f.log_text());
        assert!(
            !f.log_text().contains("Zm9vOmJhcg=="),
            "{server}: the key leaked"
        );
        assert_eq!(es_count(&url, &idx), 1000, "{server}");
        drop_index(&url, &idx);
    }
}

/// `https://` with `tls: {ca_file}`: a TLS endpoint (socat, with a server
/// certificate signed by a CA made here) in front of each server; ferry
/// trusts it through the CA file and loads every record. Without the CA
/// file it refuses the certificate and says so.
#[test]
fn tls_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = TlsCerts::make(d);
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 1000);
    for (server, url) in es_servers() {
        let port = free_port();
        let upstream = url.trim_start_matches("http://").trim_end_matches('/');
        let _tls = tls_terminator(port, upstream, &certs);
        let idx = index("tls");
        let https = format!("https://127.0.0.1:{port}");
        let ca = &certs.ca;
        es_config(
            d,
            "t",
            &https,
            &idx,
            &format!("  tls: {{ca_file: {}}}\n", ca.display()),
        );
        let (status, log) = run_to_end(d, &["run", "--once", "t.yaml"], Duration::from_secs(60));
        assert!(status.success(), "{server}: {log}");
        assert_eq!(es_count(&url, &idx), 1000, "{server}");

        // Without the CA the certificate is not trusted: reported, retried.
        let _ = fs::remove_dir_all(d.join("data"));
        es_config(
            d,
            "u",
            &https,
            &idx,
            "  retry: {max_retries: 1, initial_backoff: 10ms}\n",
        );
        let mut f = Ferry::start(d, &["run", "u.yaml"]);
        let reported = wait_until(Duration::from_secs(30), || {
            f.log_text().to_lowercase().contains("certificate")
        });
        f.signal(libc::SIGTERM);
        f.wait_for_exit(Duration::from_secs(30));
        assert!(reported, "{server}: {}", f.log_text());
        drop_index(&url, &idx);
    }
}

/// A slow cluster (every bulk request held 100 ms by the proxy) slows the
/// source down instead of filling memory: while 60,000 records of a file
/// wait, the records read but not yet committed never exceed the engine's
/// bound: 4 chunks of 1,000 queued, 1 being handed over, 4,000 being
/// written, and two batches written but not yet committed (one
/// committing, one filling; a batch of 2,000 filled by chunks of 1,000
/// holds at most 2,999) — 15,000 at most, whatever the backlog (seen:
/// 13,000 and 14,000).
#[test]
fn a_slow_cluster_slows_the_source_down() {
    let (server, url) = es_servers().remove(0);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let idx = index("slow");
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", 60_000);
    let (proxy, _) = fault_proxy(
        url.clone(),
        Schedule {
            delay: Duration::from_millis(100),
            ..Schedule::default()
        },
    );
    es_config(d, "s", &proxy, &idx, "  bulk: {max_actions: 500}\n");
    let (status, log) = run_to_end(
        d,
        &["run", "--once", "--progress-interval", "100ms", "s.yaml"],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{server}: {log}");
    // "s: in 12000 out 6000 (…"
    let gaps: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("s: in ")?.1;
            let (inn, rest) = rest.split_once(" out ")?;
            let out = rest.split_whitespace().next()?;
            Some(inn.parse::<u64>().ok()? - out.parse::<u64>().ok()?)
        })
        .collect();
    assert!(gaps.len() >= 10, "{server}: progress lines: {log}");
    let most = gaps.iter().max().copied().unwrap_or(0);
    eprintln!(
        "{server}: {} progress lines, at most {most} records read ahead of the sink",
        gaps.len()
    );
    assert!(most <= 15_000, "{server}: {most} records read ahead: {log}");
    assert_eq!(es_count(&url, &idx), 60_000, "{server}");
    drop_index(&url, &idx);
}

/// The other actions and ids, into an index named by a field: `create`
/// with ids from a field refuses a second document with the same id (409,
/// dead-lettered with the server's reason); `update` (doc_as_upsert) with
/// the same ids merges, the later record winning; `id: none` lets the
/// server choose ids — on both servers.
#[test]
fn create_update_and_field_ids_into_templated_indexes() {
    for (server, url) in es_servers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("in")).unwrap();
        // Users u0…u4, each twice (seq n and n + 5); tenant by user.
        let mut input = String::new();
        for seq in 0..10u64 {
            let user = seq % 5;
            input.push_str(&format!(
                "{{\"file\": \"x\", \"seq\": {seq}, \"user\": \"u{user}\", \"tenant\": \"t{}\", \"v\": {seq}}}\n",
                user % 2
            ));
        }
        fs::write(d.join("in/x.jsonl"), input).unwrap();
        let base = index("act");
        let template = format!("{base}-{{tenant}}");
        let run = |name: &str, extra: &str| {
            es_config(d, name, &url, &template, extra);
            let yaml = fs::read_to_string(d.join(format!("{name}.yaml"))).unwrap()
                + &format!("errors:\n  tolerance: all\n  dead_letter: {name}-dlq.jsonl\n");
            fs::write(d.join(format!("{name}.yaml")), yaml).unwrap();
            let (status, log) = run_to_end(
                d,
                &["run", "--once", &format!("{name}.yaml")],
                Duration::from_secs(60),
            );
            assert!(status.success(), "{server} {name}: {log}");
            read_jsonl(&d.join(format!("{name}-dlq.jsonl")))
        };
        let count = |tenant: &str| es_count(&url, &format!("{base}-{tenant}"));

        let dead = run("create", "  action: create\n  id: {field: user}\n");
        let seqs: Vec<u64> = dead
            .iter()
            .map(|e| e["record"]["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, [5, 6, 7, 8, 9], "{server}: {dead:?}");
        assert!(dead[0].to_string().contains("409"), "{server}: {}", dead[0]);
        // u0, u2, u4 → t0; u1, u3 → t1.
        assert_eq!((count("t0"), count("t1")), (3, 2), "{server}");

        let dead = run("update", "  action: update\n  id: {field: user}\n");
        assert!(dead.is_empty(), "{server}: {dead:?}");
        assert_eq!((count("t0"), count("t1")), (3, 2), "{server}");
        let (_, body) = http(&url, "GET", &format!("/{base}-t1/_doc/u3"), None);
        let doc: serde_json::Value = serde_json::from_str(&body).expect("a document");
        assert_eq!(
            doc["_source"]["v"], 8,
            "{server}: the later record wins: {body}"
        );

        let dead = run("none", "  id: none\n");
        assert!(dead.is_empty(), "{server}: {dead:?}");
        assert_eq!((count("t0"), count("t1")), (3 + 6, 2 + 4), "{server}");
        for tenant in ["t0", "t1"] {
            drop_index(&url, &format!("{base}-{tenant}"));
        }
    }
}

/// A `route` transform sends each record to the index its field names;
/// one routed to a name Elasticsearch refuses (uppercase) is dead-lettered
/// before anything is sent — on both servers.
#[test]
fn routed_records_go_to_their_indexes() {
    for (server, url) in es_servers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("in")).unwrap();
        let base = index("route");
        let input: String = (0..900u64)
            .map(|seq| {
                let to = ["eu", "us", "BAD"][(seq % 3) as usize];
                format!("{{\"file\": \"r\", \"seq\": {seq}, \"to\": \"{base}-{to}\"}}\n")
            })
            .collect();
        fs::write(d.join("in/r.jsonl"), input).unwrap();
        es_config(
            d,
            "route",
            &url,
            &base,
            // The field's value is the name (a map's names are checked at
            // load, and `-BAD` would be refused there).
            "transforms:\n  - type: route\n    field: to\nerrors:\n  tolerance: all\n  dead_letter: dlq.jsonl\n",
        );
        let (status, log) =
            run_to_end(d, &["run", "--once", "route.yaml"], Duration::from_secs(60));
        assert!(status.success(), "{server}: {log}");
        for (m, region) in [(0, "eu"), (1, "us")] {
            let idx = format!("{base}-{region}");
            http(&url, "POST", &format!("/{idx}/_refresh"), None);
            let expected: Vec<u64> = (0..900).filter(|s| s % 3 == m).collect();
            assert_eq!(es_seqs(&url, &idx), expected, "{server}: {idx}");
            drop_index(&url, &idx);
        }
        let dlq = read_jsonl(&d.join("dlq.jsonl"));
        assert_eq!(dlq.len(), 300, "{server}");
        let error = dlq[0]["error"].as_str().unwrap();
        assert!(error.contains("must be lowercase"), "{server}: {error}");
    }
}
