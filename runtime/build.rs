//! Links `ferry` (and this crate's tests) with the librdkafka guard of the
//! Kafka connector (`connectors/kafka/src/librdkafka.rs`): librdkafka 2.12
//! crashes on a broker answer the guard turns into a skipped entry.
fn main() {
    if std::env::var_os("CARGO_FEATURE_KAFKA").is_some() {
        println!("cargo::rustc-link-arg=-Wl,--wrap=rd_kafka_metadata_cache_find");
    }
}
