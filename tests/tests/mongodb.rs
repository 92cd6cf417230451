//! MongoDB sink against a real MongoDB-wire server (SecantusDB, which
//! `scripts/services` builds and starts on 127.0.0.1:27217; MONGODB_URI
//! overrides). No server is a failure, not a skip.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ferry_tests::*;
use mongodb::bson::{Document, doc};

/// A fresh database per test: tests run in any order on one server.
fn database(what: &str) -> String {
    format!("ferry_{what}_{}", fastrand::u32(..))
}

/// `(file, seq)` of every document, sorted.
fn keys(db: &str, coll: &str) -> Vec<(String, i64)> {
    with_mongodb(async |c| {
        let mut cursor = c
            .database(db)
            .collection::<Document>(coll)
            .find(doc! {})
            .await
            .expect("find");
        let mut keys = Vec::new();
        while cursor.advance().await.expect("cursor") {
            let d = cursor.deserialize_current().expect("document");
            let seq = d
                .get_i64("seq")
                .or_else(|_| d.get_i32("seq").map(i64::from))
                .expect("seq");
            keys.push((d.get_str("file").expect("file").to_string(), seq));
        }
        keys.sort();
        keys
    })
}

fn unique_email_index(db: &str, coll: &str) {
    with_mongodb(async |c| {
        let unique = mongodb::options::IndexOptions::builder()
            .unique(true)
            .build();
        c.database(db)
            .collection::<Document>(coll)
            .create_index(
                mongodb::IndexModel::builder()
                    .keys(doc! {"email": 1})
                    .options(unique)
                    .build(),
            )
            .await
            .expect("index")
    });
}

fn drop_database(db: &str) {
    with_mongodb(async |c| c.database(db).drop().await.expect("drop"));
}

fn start(d: &Path, args: &[&str]) -> Ferry {
    Ferry::start_with_env(d, args, &[("MONGODB_URI", &mongodb_uri())])
}

/// file → MongoDB (`write: upsert`; the Kafka test covers the default,
/// `insert`), 100,000 records with ids from their positions, ferry
/// SIGKILLed 8 times at random points: a replay overwrites what the killed
/// run wrote after its last commit, so the collection ends with exactly
/// 100,000 documents, each record once.
#[test]
fn file_to_mongodb_exactly_once_across_sigkill() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = database("crash");
    fs::create_dir_all(d.join("in")).unwrap();
    write_test_input(&d.join("in/a.jsonl"), "a", N / 2);
    write_test_input(&d.join("in/b.jsonl"), "b", N / 2);
    fs::write(
        d.join("mongo.yaml"),
        format!(
            "name: {db}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}\n  collection: records\n  write: upsert\ndelivery:\n  batch_size: 2000\n  flush_interval: 100ms\n"
        ),
    )
    .unwrap();
    let uri = mongodb_uri();
    let progress = || mongodb_count(&db, "records");
    for kill in 0..8 {
        kill9_mid_run(
            d,
            "mongo.yaml",
            &[("MONGODB_URI", &uri)],
            progress,
            N,
            (kill, 8),
        );
        eprintln!("kill {kill}: {} documents", progress());
    }
    let mut f = start(d, &["run", "--once", "mongo.yaml"]);
    let status = f.wait_for_exit(Duration::from_secs(180)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());
    let keys = keys(&db, "records");
    let mut expected: Vec<(String, i64)> = Vec::new();
    for tag in ["a", "b"] {
        expected.extend((0..(N / 2) as i64).map(|s| (tag.to_string(), s)));
    }
    expected.sort();
    assert_eq!(keys.len() as u64, N, "documents");
    assert!(keys == expected, "each record exactly once");
    drop_database(&db);
}

/// A unique index on `email` refuses some documents of a batch: with
/// `tolerance: all` exactly those are dead-lettered with the server's
/// message and all others arrive; with `tolerance: none` the pipeline stops
/// naming the record's position, and nothing after it is committed.
#[test]
fn refused_documents_with_both_tolerances() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = database("refused");
    // 300 users; numbers 100, 150 and 200 reuse the email of user 0.
    let mut input = String::new();
    for n in 0..300 {
        let email = if [100, 150, 200].contains(&n) { 0 } else { n };
        input.push_str(&format!(
            "{{\"file\": \"u\", \"seq\": {n}, \"email\": \"user{email}@example.org\"}}\n"
        ));
    }
    fs::write(d.join("users.jsonl"), input).unwrap();
    for tolerance in ["all", "none"] {
        let _ = fs::remove_dir_all(d.join("data"));
        let coll = format!("users_{tolerance}");
        unique_email_index(&db, &coll);
        let dlq = if tolerance == "all" {
            "  dead_letter: dlq-all.jsonl\n"
        } else {
            ""
        };
        fs::write(
            d.join("users.yaml"),
            format!(
                "name: users-{tolerance}\nsource:\n  type: file\n  path: users.jsonl\nsink:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}\n  collection: {coll}\nerrors:\n  tolerance: {tolerance}\n{dlq}"
            ),
        )
        .unwrap();
        let mut f = start(d, &["run", "--once", "users.yaml"]);
        let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
        if tolerance == "all" {
            assert!(status.success(), "{}", f.log_text());
            assert_eq!(mongodb_count(&db, &coll), 297);
            let dead = read_jsonl(&d.join("dlq-all.jsonl"));
            let seqs: Vec<u64> = dead
                .iter()
                .map(|e| e["record"]["seq"].as_u64().expect("seq"))
                .collect();
            assert_eq!(seqs, vec![100, 150, 200], "{dead:?}");
            for e in &dead {
                let text = e.to_string();
                assert!(
                    text.contains("E11000") || text.contains("duplicate"),
                    "{text}"
                );
            }
        } else {
            assert!(!status.success(), "must stop");
            let log = f.log_text();
            assert!(log.contains("bad record at"), "{log}");
            assert!(log.contains("users.jsonl"), "names the position: {log}");
        }
    }
    drop_database(&db);
}

/// The demo of the README (`scripts/demo`): generate → Kafka `testnum` →
/// MongoDB `testnum.testnum`, ferry SIGKILLed mid-way and restarted: 500
/// documents, 500 distinct `num` values.
#[test]
fn the_demo_runs_out_of_the_box() {
    let work = tempfile::tempdir().unwrap();
    let counts = ferry_tests::demo::run(&workspace_root().join("configs/demo"), work.path());
    assert_eq!(
        counts,
        ferry_tests::demo::Counts {
            documents: 500,
            distinct_num: 500
        }
    );
}

/// A SecantusDB of the test's own (the one `scripts/services` built), on a
/// free port, so that it can be killed and started again.
struct PrivateServer {
    child: std::process::Child,
    port: u16,
    storage: std::path::PathBuf,
}

impl PrivateServer {
    fn binary() -> std::path::PathBuf {
        std::env::var_os("FERRY_SECANTUSD").map_or_else(
            || "/var/tmp/ferry-tools/mongo/bin/secantusd-rs".into(),
            Into::into,
        )
    }

    fn start(port: u16, storage: &Path) -> PrivateServer {
        let child = std::process::Command::new(Self::binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--storage-path",
            ])
            .arg(storage)
            // Without it, writes acknowledged with j:true can be lost to
            // the SIGKILL below (seen: 80 of 20,000 documents gone).
            .args([
                "--sync-on-commit",
                "--log-file-max",
                "16MB",
                "--cache-size",
                "128M",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(storage.with_extension("log")).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", Self::binary().display()));
        let up = wait_until(Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "SecantusDB did not come up on {port}: {}",
            fs::read_to_string(storage.with_extension("log")).unwrap_or_default()
        );
        PrivateServer {
            child,
            port,
            storage: storage.to_path_buf(),
        }
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// generate → MongoDB while the server is killed with SIGKILL and started
/// again mid-run: ferry reports the failed writes, retries with backoff, and
/// carries on by itself when the server is back; every record ends up
/// exactly once.
#[test]
fn mongodb_server_killed_and_restarted_mid_run() {
    const N: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let storage = d.join("mongo-data");
    let mut server = PrivateServer::start(port, &storage);
    let uri = server.uri();
    fs::write(
        d.join("gen.yaml"),
        format!(
            "name: gen\nsource:\n  type: generate\n  count: {N}\n  rate: 2000\n  template: {{\"file\": \"m\", \"seq\": \"{{{{seq}}}}\"}}\nsink:\n  type: mongodb\n  uri: {uri}\n  database: outage\n  collection: records\ndelivery:\n  flush_interval: 100ms\nerrors:\n  retry_backoff: 200ms\n  retry_backoff_max: 2s\n"
        ),
    )
    .unwrap();
    let documents = |uri: &str| {
        with_mongodb_at(uri, async |c| {
            c.database("outage")
                .collection::<Document>("records")
                .count_documents(doc! {})
                .await
                .unwrap_or(0)
        })
    };
    let mut f = Ferry::start(d, &["run", "gen.yaml"]);
    let mark = fastrand::u64(N / 4..N / 2);
    assert!(
        wait_until(Duration::from_secs(60), || documents(&uri) >= mark),
        "never reached {mark}: {}",
        f.log_text()
    );
    server.kill9();
    let reported = wait_until(Duration::from_secs(30), || {
        f.log_text()
            .contains("starting again from the committed positions")
    });
    assert!(reported, "the outage was not reported:\n{}", f.log_text());
    let storage = server.storage.clone();
    drop(server);
    let server = PrivateServer::start(port, &storage);
    eprintln!("server restarted after {mark}+ documents");
    let done = wait_until(Duration::from_secs(120), || documents(&uri) >= N);
    std::thread::sleep(Duration::from_millis(500));
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    assert!(done, "{} of {N}:\n{}", documents(&uri), f.log_text());
    let (count, distinct) = with_mongodb_at(&server.uri(), async |c| {
        let coll = c.database("outage").collection::<Document>("records");
        (
            coll.count_documents(doc! {}).await.expect("count"),
            coll.distinct("seq", doc! {}).await.expect("distinct").len() as u64,
        )
    });
    assert_eq!((count, distinct), (N, N), "documents, distinct seq");
}

/// One change the writer below made, as the source must report it:
/// `(operation, _id, v)` with `v` the value the change set (none for a
/// delete).
type Change = (String, i64, Option<i64>);

/// Makes `ops` changes to `db.items`, one at a time, and returns them in the
/// order the server applied them: op `j` inserts `{_id: 100000 + j, v: j}`
/// (j % 3 == 0), updates the document the previous op inserted (j % 3 ==
/// 1), and then either deletes that document or updates one of the
/// snapshot's documents (j % 3 == 2, alternately).
fn make_changes(uri: &str, db: &str, ops: i64, per_second: u64) -> Vec<Change> {
    with_mongodb_at(uri, async |c| {
        let items = c.database(db).collection::<Document>("items");
        let mut log = Vec::new();
        let pause = Duration::from_micros(1_000_000 / per_second);
        for j in 0..ops {
            let change = match j % 3 {
                0 => {
                    let id = 100_000 + j;
                    items
                        .insert_one(doc! {"_id": id, "v": j})
                        .await
                        .expect("insert");
                    ("insert".to_string(), id, Some(j))
                }
                1 => {
                    let id = 100_000 + j - 1;
                    items
                        .update_one(doc! {"_id": id}, doc! {"$set": {"v": j}})
                        .await
                        .expect("update");
                    ("update".to_string(), id, Some(j))
                }
                _ if j % 6 == 2 => {
                    let id = 100_000 + j - 2;
                    items.delete_one(doc! {"_id": id}).await.expect("delete");
                    ("delete".to_string(), id, None)
                }
                _ => {
                    let id = j % 1000;
                    items
                        .update_one(doc! {"_id": id}, doc! {"$set": {"v": j}})
                        .await
                        .expect("update");
                    ("update".to_string(), id, Some(j))
                }
            };
            log.push(change);
            tokio::time::sleep(pause).await;
        }
        log
    })
}

fn change_stream_config(d: &Path, db: &str, snapshot: &str) {
    fs::write(
        d.join("cdc.yaml"),
        format!(
            "name: cdc\nsource:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}\n  collection: items\n  snapshot: {snapshot}\n  batch_size: 500\nsink:\n  type: file\n  path: out/changes.jsonl\ndelivery:\n  batch_size: 500\n  flush_interval: 50ms\n"
        ),
    )
    .unwrap();
}

/// MongoDB (snapshot, then change stream) → file, ferry SIGKILLed twice
/// while it reads the snapshot and four times while another client inserts,
/// updates and deletes: the
/// snapshot holds each document that was there before exactly once, and the
/// changes arrive exactly once each, in the order the server applied them.
/// The file sink stores the resume tokens in its manifest, so a restart
/// resumes exactly after the last change written.
#[test]
fn change_stream_to_file_exactly_once_in_order_across_sigkill() {
    const BEFORE: i64 = 20_000;
    const OPS: i64 = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = database("cdc");
    let uri = mongodb_uri();
    with_mongodb(async |c| {
        let docs: Vec<Document> = (0..BEFORE).map(|i| doc! {"_id": i, "v": -1}).collect();
        c.database(&db)
            .collection::<Document>("items")
            .insert_many(docs)
            .await
            .expect("insert the snapshot's documents");
    });
    change_stream_config(d, &db, "initial");
    let out = d.join("out/changes.jsonl");
    let progress = || count_lines(&out) as u64;
    // The writer starts once a snapshot position is committed: the
    // stream's start point is stored with it. Before that, a restart begins
    // a new snapshot from a new start point, and changes made earlier are
    // in that snapshot instead of the stream.
    let writer = {
        let (uri, db) = (uri.clone(), db.clone());
        let manifest = d.join("out/changes.jsonl.ferry-manifest");
        std::thread::spawn(move || {
            let started = wait_until(Duration::from_secs(120), || {
                fs::read_to_string(&manifest).is_ok_and(|m| m.contains("\"snapshot\""))
            });
            assert!(started, "no snapshot position was ever committed");
            make_changes(&uri, &db, OPS, 1_000)
        })
    };
    let env = [("MONGODB_URI", uri.as_str())];
    // Two kills while the snapshot is read, four while the changes stream.
    for kill in 0..2 {
        kill9_mid_run(d, "cdc.yaml", &env, progress, BEFORE as u64, (kill, 2));
        eprintln!("kill {kill} (snapshot): {} lines", progress());
    }
    let changes_read = || progress().saturating_sub(BEFORE as u64);
    for kill in 0..4 {
        kill9_mid_run(d, "cdc.yaml", &env, changes_read, OPS as u64, (kill, 4));
        eprintln!("kill {} (stream): {} lines", kill + 2, progress());
    }
    let log = writer.join().expect("writer");
    let mut f = start(d, &["run", "--once", "cdc.yaml"]);
    let status = f.wait_for_exit(Duration::from_secs(120)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());

    let records = read_jsonl(&out);
    let id = |r: &serde_json::Value| r["key"]["_id"].as_i64().expect("an integer _id");
    // The snapshot: every document that was there before, once.
    let mut snapshot: Vec<i64> = records
        .iter()
        .filter(|r| r["operation"] == "snapshot")
        .map(id)
        .collect();
    snapshot.sort();
    let before_ids: Vec<i64> = snapshot.iter().copied().filter(|&i| i < BEFORE).collect();
    assert_eq!(before_ids, (0..BEFORE).collect::<Vec<_>>(), "snapshot");
    // Documents the writer inserted while the snapshot ran may be in it
    // too (the documented overlap), but once at most.
    let mut later = snapshot
        .iter()
        .filter(|&&i| i >= BEFORE)
        .collect::<Vec<_>>();
    let n = later.len();
    later.dedup();
    assert_eq!(later.len(), n, "a document twice in the snapshot");
    // The changes: exactly the writer's, in its order.
    let changes: Vec<Change> = records
        .iter()
        .filter(|r| r["operation"] != "snapshot")
        .map(|r| {
            let op = r["operation"].as_str().expect("operation").to_string();
            let v = match op.as_str() {
                "insert" => r["document"]["v"].as_i64(),
                "update" => r["update"]["updated"]["v"].as_i64(),
                _ => None,
            };
            (op, id(r), v)
        })
        .collect();
    if changes != log {
        let first = changes.iter().zip(&log).position(|(a, b)| a != b);
        panic!(
            "{} changes read, {} made; first difference at {first:?}: {:?} vs {:?}",
            changes.len(),
            log.len(),
            first.map(|i| &changes[i]),
            first.map(|i| &log[i]),
        );
    }
    drop_database(&db);
}

/// The change stream's committed resume token points into history the
/// server no longer has (here: the server started again on empty storage,
/// as after a restore or an oplog that rolled over): ferry stops with an
/// error that names the stream and says how to start from a fresh
/// snapshot, instead of silently skipping the changes in between.
#[test]
fn stale_resume_token_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let server = PrivateServer::start(port, &d.join("mongo-a"));
    let uri = server.uri();
    fs::write(
        d.join("cdc.yaml"),
        format!(
            "name: cdc\nsource:\n  type: mongodb\n  uri: {uri}\n  database: stale\n  collection: items\n  snapshot: never\nsink:\n  type: file\n  path: out/changes.jsonl\ndelivery:\n  flush_interval: 50ms\n"
        ),
    )
    .unwrap();
    let mut f = Ferry::start(d, &["run", "cdc.yaml"]);
    assert!(
        wait_until(Duration::from_secs(30), || f
            .log_text()
            .contains("pipeline started")),
        "{}",
        f.log_text()
    );
    with_mongodb_at(&uri, async |c| {
        let items = c.database("stale").collection::<Document>("items");
        for i in 0..100 {
            items.insert_one(doc! {"_id": i}).await.expect("insert");
        }
    });
    let manifest = d.join("out/changes.jsonl.ferry-manifest");
    assert!(
        wait_until(Duration::from_secs(30), || count_lines(
            &d.join("out/changes.jsonl")
        ) == 100
            && fs::read_to_string(&manifest).is_ok_and(|m| m.contains("token"))),
        "{}",
        f.log_text()
    );
    f.signal(libc::SIGTERM);
    assert!(
        f.wait_for_exit(Duration::from_secs(30))
            .expect("stops")
            .success()
    );
    drop(server);
    // The same address, none of the history.
    let server = PrivateServer::start(port, &d.join("mongo-b"));
    with_mongodb_at(&server.uri(), async |c| {
        let items = c.database("stale").collection::<Document>("items");
        items.insert_one(doc! {"_id": 1000}).await.expect("insert");
    });
    let mut f = Ferry::start(d, &["run", "--once", "cdc.yaml"]);
    let status = f.wait_for_exit(Duration::from_secs(60)).expect("stops");
    let log = f.log_text();
    assert!(!status.success(), "must stop:\n{log}");
    assert!(log.contains("no longer accepts its resume token"), "{log}");
    assert!(
        log.contains("ferry offsets reset"),
        "says how to start over: {log}"
    );
    assert_eq!(
        count_lines(&d.join("out/changes.jsonl")),
        100,
        "nothing more written"
    );
}

/// A change stream on a whole database (`database`, no `collection`) or
/// the whole server (neither): the snapshot reads every collection (in
/// namespace order), then changes to any of them stream, each naming its
/// collection; a collection created after the start is followed too.
fn change_stream_covers_every_collection(uri: &str, db: &str, whole_server: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    with_mongodb_at(uri, async |c| {
        for coll in ["alpha", "beta"] {
            let docs: Vec<Document> = (0..100).map(|i| doc! {"_id": i, "c": coll}).collect();
            c.database(db)
                .collection::<Document>(coll)
                .insert_many(docs)
                .await
                .expect("insert");
        }
    });
    let scope = if whole_server {
        String::new()
    } else {
        format!("  database: {db}\n")
    };
    fs::write(
        d.join("db.yaml"),
        format!(
            "name: cdcdb\nsource:\n  type: mongodb\n  uri: {uri}\n{scope}sink:\n  type: file\n  path: out/changes.jsonl\ndelivery:\n  flush_interval: 50ms\n"
        ),
    )
    .unwrap();
    let out = d.join("out/changes.jsonl");
    let mut f = Ferry::start(d, &["run", "db.yaml"]);
    assert!(
        wait_until(Duration::from_secs(30), || count_lines(&out) >= 200),
        "the snapshot: {}",
        f.log_text()
    );
    with_mongodb_at(uri, async |c| {
        let database = c.database(db);
        for coll in ["beta", "alpha", "gamma"] {
            database
                .collection::<Document>(coll)
                .insert_one(doc! {"_id": 1000, "c": coll})
                .await
                .expect("insert");
        }
    });
    assert!(
        wait_until(Duration::from_secs(30), || count_lines(&out) >= 203),
        "the changes: {}",
        f.log_text()
    );
    f.signal(libc::SIGTERM);
    f.wait_for_exit(Duration::from_secs(30)).expect("stops");
    let records = read_jsonl(&out);
    let snapshot: Vec<(String, i64)> = records[..200]
        .iter()
        .map(|r| {
            assert_eq!(r["operation"], "snapshot", "{r}");
            assert_eq!(r["database"], db, "{r}");
            (
                r["collection"].as_str().unwrap().to_string(),
                r["key"]["_id"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = ["alpha", "beta"]
        .iter()
        .flat_map(|c| (0..100).map(move |i| (c.to_string(), i)))
        .collect();
    assert_eq!(
        snapshot, expected,
        "every collection, in name and _id order"
    );
    let changes: Vec<(&str, &str)> = records[200..]
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["collection"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [("insert", "beta"), ("insert", "alpha"), ("insert", "gamma")]
    );
}

#[test]
fn change_stream_on_a_database_covers_every_collection() {
    let db = database("cdcdb");
    change_stream_covers_every_collection(&mongodb_uri(), &db, false);
    drop_database(&db);
}

/// The whole server, on a private one: the shared server holds every
/// other test's databases.
#[test]
fn change_stream_on_the_server_covers_every_database() {
    let dir = tempfile::tempdir().unwrap();
    let server = PrivateServer::start(free_port(), &dir.path().join("mongo"));
    change_stream_covers_every_collection(&server.uri(), "shop", true);
}

/// A field name with a NUL byte used to fail every command it was in, for
/// good (0 of 23 written, exit 1, again on every rerun); an integer past 64
/// bits was stored as a rounded double. Both are refused records now, and
/// the others arrive.
#[test]
fn what_bson_cannot_hold_is_a_refused_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = database("unstorable");
    let mut input = String::new();
    for n in 0..23 {
        input.push_str(&match n {
            5 => format!("{{\"file\": \"u\", \"seq\": {n}, \"bad\\u0000name\": 1}}\n"),
            9 => format!("{{\"file\": \"u\", \"seq\": {n}, \"big\": 18446744073709551616}}\n"),
            _ => format!("{{\"file\": \"u\", \"seq\": {n}, \"ok\": 12.50}}\n"),
        });
    }
    fs::write(d.join("in.jsonl"), input).unwrap();
    fs::write(
        d.join("m.yaml"),
        format!(
            "name: unstorable\nsource:\n  type: file\n  path: in.jsonl\nsink:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}\n  collection: c\nerrors:\n  tolerance: all\n  dead_letter: dlq.jsonl\n"
        ),
    )
    .unwrap();
    let mut f = start(d, &["run", "--once", "m.yaml"]);
    let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());
    assert_eq!(mongodb_count(&db, "c"), 21);
    let dead = read_jsonl(&d.join("dlq.jsonl"));
    let seqs: Vec<u64> = dead
        .iter()
        .map(|e| e["record"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 9], "{dead:?}");
    assert!(
        dead[0]["error"].as_str().unwrap().contains("NUL"),
        "{dead:?}"
    );
    assert!(
        dead[1]["error"]
            .as_str()
            .unwrap()
            .contains("would round it"),
        "{dead:?}"
    );
    drop_database(&db);
}

/// SIGTERM at random moments of a daemon writing to MongoDB and reading a
/// change stream of it, 16 times: every stop is clean — exit 0, no panic.
/// The driver panicked at the process's exit in about 1 run in 16
/// (`connection_requester.rs`, a connection requested of a pool whose
/// worker was already gone) while ferry still exited 0; the clients are now
/// shut down before they are dropped.
#[test]
fn stopping_never_panics_the_driver() {
    let db = database("stop");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("pipelines")).unwrap();
    fs::write(
        d.join("pipelines/write.yaml"),
        format!(
            "name: write\nsource:\n  type: generate\n  rate: 5000\n  template: {{\"seq\": \"{{{{seq}}}}\"}}\nsink:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}\n  collection: items\ndelivery:\n  flush_interval: 20ms\n"
        ),
    )
    .unwrap();
    fs::write(
        d.join("pipelines/watch.yaml"),
        format!(
            "name: watch\nsource:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}\n  collection: items\n  snapshot: never\nsink:\n  type: file\n  path: changes.jsonl\n"
        ),
    )
    .unwrap();
    for round in 0..16 {
        let mut f = start(d, &["run", "pipelines"]);
        assert!(
            wait_until(Duration::from_secs(30), || f
                .log_text()
                .matches("pipeline started")
                .count()
                == 2),
            "round {round}: not started:\n{}",
            f.log_text()
        );
        std::thread::sleep(Duration::from_millis(fastrand::u64(50..1500)));
        f.signal(libc::SIGTERM);
        let status = f.wait_for_exit(Duration::from_secs(30)).expect("stops");
        let log = f.log_text();
        assert!(
            status.success() && !log.contains("panicked"),
            "round {round}: {status:?}\n{log}"
        );
    }
    drop_database(&db);
}

/// `id: {field: key}` with `write: insert`: a replay (the same record
/// again) is skipped, a *different* record with a key already stored is
/// refused and dead-lettered — it was skipped silently, counted in `out`,
/// while `validate` claimed exactly-once without a word. `validate` now says
/// what the combination does. And under `id: position` a record's own
/// `_id` is replaced by the position: said once in the log.
#[test]
fn insert_with_field_ids_tells_a_replay_from_a_different_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = database("firstwins");
    fs::write(
        d.join("in.jsonl"),
        "{\"key\": 1, \"v\": \"a\"}\n{\"key\": 2, \"v\": \"b\"}\n{\"key\": 1, \"v\": \"c\"}\n{\"key\": 2, \"v\": \"b\"}\n",
    )
    .unwrap();
    fs::write(
        d.join("m.yaml"),
        format!(
            "name: firstwins\nsource:\n  type: file\n  path: in.jsonl\nsink:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}\n  collection: c\n  id: {{field: key}}\n  write: insert\nerrors:\n  tolerance: all\n  dead_letter: dlq.jsonl\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(ferry_bin())
        .args(["validate", "m.yaml"])
        .current_dir(d)
        .env("MONGODB_URI", mongodb_uri())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("a different record with the same id is refused (dead-lettered)"),
        "{said}"
    );
    let mut f = start(d, &["run", "--once", "m.yaml"]);
    let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
    assert!(status.success(), "{}", f.log_text());
    assert_eq!(mongodb_count(&db, "c"), 2);
    let dead = read_jsonl(&d.join("dlq.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["record"]["v"], "c", "{dead:?}");
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("a different document with _id 1"),
        "{dead:?}"
    );

    fs::write(
        d.join("own.jsonl"),
        "{\"_id\": \"x1\", \"v\": 1}\n{\"_id\": \"x2\", \"v\": 2}\n",
    )
    .unwrap();
    fs::write(
        d.join("own.yaml"),
        format!(
            "name: own\nsource:\n  type: file\n  path: own.jsonl\nsink:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}\n  collection: own\n"
        ),
    )
    .unwrap();
    let mut f = start(d, &["run", "--once", "own.yaml"]);
    let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
    let log = f.log_text();
    assert!(status.success(), "{log}");
    assert_eq!(
        log.matches("records carry an `_id` of their own").count(),
        1,
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("records carry an `_id`") && l.contains("pipeline=own")),
        "{log}"
    );
    drop_database(&db);
}

/// A `route` transform sends records to collections by a field, a record
/// without it goes to the route's default, one routed to a name MongoDB
/// refuses is dead-lettered; `collection: {field: …}` does the same without
/// a transform.
#[test]
fn routed_records_go_to_their_collections() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = database("route");
    fs::create_dir_all(d.join("in")).unwrap();
    let mut lines = String::new();
    for seq in 0..3000 {
        let region = ["eu", "us", "$bad"][seq % 3];
        if seq % 10 == 0 {
            lines.push_str(&format!("{{\"file\": \"a\", \"seq\": {seq}}}\n"));
        } else {
            lines.push_str(&format!(
                "{{\"file\": \"a\", \"seq\": {seq}, \"region\": \"{region}\"}}\n"
            ));
        }
    }
    fs::write(d.join("in/a.jsonl"), lines).unwrap();
    for (name, collection, transforms) in [
        (
            "routed",
            "records",
            "transforms:\n  - type: route\n    field: region\n    default: unknown\n",
        ),
        ("named", "{field: region}", ""),
    ] {
        fs::write(
            d.join(format!("{name}.yaml")),
            format!(
                "name: {name}\nsource:\n  type: file\n  path: in/*.jsonl\n{transforms}sink:\n  type: mongodb\n  uri: ${{MONGODB_URI}}\n  database: {db}_{name}\n  collection: {collection}\nerrors:\n  tolerance: all\n  dead_letter: {name}-dlq.jsonl\n"
            ),
        )
        .unwrap();
        let mut f = start(d, &["run", "--once", &format!("{name}.yaml")]);
        let status = f.wait_for_exit(Duration::from_secs(60)).expect("finishes");
        assert!(status.success(), "{}", f.log_text());
    }
    let seqs =
        |db: &str, coll: &str| -> Vec<i64> { keys(db, coll).into_iter().map(|(_, s)| s).collect() };
    let expect =
        |keep: &dyn Fn(i64) -> bool| -> Vec<i64> { (0..3000).filter(|&s| keep(s)).collect() };
    let routed = format!("{db}_routed");
    assert_eq!(seqs(&routed, "eu"), expect(&|s| s % 3 == 0 && s % 10 != 0));
    assert_eq!(seqs(&routed, "us"), expect(&|s| s % 3 == 1 && s % 10 != 0));
    assert_eq!(seqs(&routed, "unknown"), expect(&|s| s % 10 == 0));
    assert_eq!(mongodb_count(&routed, "records"), 0);
    let dlq = read_jsonl(&d.join("routed-dlq.jsonl"));
    assert_eq!(dlq.len(), 1000 - 100, "records routed to $bad");
    assert!(
        dlq[0]["error"]
            .as_str()
            .unwrap()
            .contains("collection \"$bad\""),
        "{}",
        dlq[0]
    );
    let named = format!("{db}_named");
    assert_eq!(seqs(&named, "eu"), expect(&|s| s % 3 == 0 && s % 10 != 0));
    let dlq = read_jsonl(&d.join("named-dlq.jsonl"));
    assert_eq!(dlq.len(), 1000 - 100 + 300, "$bad, and no region");
    assert!(
        dlq.iter()
            .any(|l| l["error"].as_str().unwrap().contains("no field `region`")),
        "{dlq:?}"
    );
    drop_database(&routed);
    drop_database(&named);
}
