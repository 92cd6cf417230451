//! Links this crate's tests with the librdkafka guard (`src/librdkafka.rs`).
fn main() {
    println!("cargo::rustc-link-arg=-Wl,--wrap=rd_kafka_metadata_cache_find");
}
