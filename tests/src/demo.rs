//! The producer → Kafka → MongoDB demo (`configs/demo`), run by
//! `scripts/demo` and by the test suite alike.
//!
//! It starts from a clean slate (topic `testnum` deleted and created again,
//! database `testnum` dropped) and runs the two pipelines as two ferry
//! daemons, as the tutorial runs a producer and a consumer: it kills the
//! consumer with SIGKILL once some documents arrived, starts it again, and
//! when all 500 are there (and a moment longer, so that a duplicate would
//! show) stops both and counts documents and distinct `num` values.
//!
//! Why not kill one daemon running both: the producer leg (anything →
//! Kafka) is at-least-once — a killed producer sends its last uncommitted
//! batch again, and the copies are new messages at new offsets. The
//! consumer leg is what the demo shows to be exactly-once.

use std::path::Path;
use std::time::Duration;

use mongodb::bson::{Document, doc};

use crate::{
    Ferry, create_topic, delete_topic, kafka_brokers, mongodb_uri, wait_until, with_mongodb,
};

/// What the demo counted.
#[derive(Debug, PartialEq)]
pub struct Counts {
    pub documents: u64,
    pub distinct_num: u64,
}

const TOPIC: &str = "testnum";
const RECORDS: u64 = 500;

fn documents() -> u64 {
    with_mongodb(async |c| {
        c.database("testnum")
            .collection::<Document>("testnum")
            .count_documents(doc! {})
            .await
            .expect("counting documents")
    })
}

/// Deletes and creates the topic again (deletion is asynchronous: retried
/// until the creation is accepted), and drops the database.
fn reset(brokers: &str) {
    delete_topic(brokers, TOPIC);
    create_topic(brokers, TOPIC, 3);
    with_mongodb(async |c| {
        c.database("testnum")
            .drop()
            .await
            .expect("dropping testnum")
    });
}

/// Runs the demo with the configs in `configs` and ferry's data in `work`.
pub fn run(configs: &Path, work: &Path) -> Counts {
    let brokers = kafka_brokers();
    let uri = mongodb_uri();
    eprintln!("demo: Kafka at {brokers}, MongoDB at {uri}");
    reset(&brokers);
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("MONGODB_URI", uri.as_str()),
    ];
    // Each daemon in a folder of its own (its offset store).
    let daemon = |name: &str| {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir).expect("work dir");
        let config = configs.join(format!("{name}.yaml"));
        Ferry::start_with_env(&dir, &["run", config.to_str().expect("UTF-8")], &env)
    };
    let mut producer = daemon("producer");
    let mut consumer = daemon("consumer");
    let mark = fastrand::u64(100..300);
    let reached = wait_until(Duration::from_secs(120), || documents() >= mark);
    assert!(
        reached,
        "no {mark} documents within 2 minutes:\n{}",
        consumer.log_text()
    );
    consumer.kill9();
    eprintln!(
        "demo: the consumer killed with SIGKILL at {} documents",
        documents()
    );
    let mut consumer = daemon("consumer");
    eprintln!("demo: the consumer started again");
    let done = wait_until(Duration::from_secs(180), || documents() >= RECORDS);
    // A moment more: anything extra would show as a duplicate.
    std::thread::sleep(Duration::from_secs(2));
    for f in [&mut consumer, &mut producer] {
        f.signal(libc::SIGTERM);
        f.wait_for_exit(Duration::from_secs(30));
    }
    assert!(
        done,
        "only {} documents:\n{}",
        documents(),
        consumer.log_text()
    );
    with_mongodb(async |c| {
        let coll = c.database("testnum").collection::<Document>("testnum");
        Counts {
            documents: coll.count_documents(doc! {}).await.expect("count"),
            distinct_num: coll.distinct("num", doc! {}).await.expect("distinct").len() as u64,
        }
    })
}
