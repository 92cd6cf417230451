//! Links with the librdkafka guard of the Kafka connector
//! (`connectors/kafka/src/librdkafka.rs`): every binary that links the
//! connector must be linked with this flag.
fn main() {
    println!("cargo::rustc-link-arg=-Wl,--wrap=rd_kafka_metadata_cache_find");
}
