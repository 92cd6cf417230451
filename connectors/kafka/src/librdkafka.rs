//! A guard around one librdkafka 2.12 bug that a broker's answer can
//! trigger, so that the answer cannot take the process down.
//!
//! A fetch response may carry KIP-951 "current leader" tags. librdkafka
//! turns them into a metadata update whose topics have no name (it fills
//! in only the topic id), and `rd_kafka_metadata_update_op` then looks a
//! topic with a zero id up *by name*: `strcmp(NULL, …)`, SIGSEGV on
//! librdkafka's main thread. Tansu sends such tags for a topic that was
//! deleted under a consumer; the whole daemon died with every pipeline in it
//! (`a_deleted_topic_is_an_error_of_its_pipeline_only`).
//!
//! The binaries are linked with `--wrap=rd_kafka_metadata_cache_find`
//! (the `build.rs` of every package whose binaries link this crate: this
//! one, `runtime`, `fuzz`, `fuzz/libfuzzer`; without it the link fails on
//! `__real_rd_kafka_metadata_cache_find`): every call from another
//! librdkafka file lands in [`__wrap_rd_kafka_metadata_cache_find`], which
//! answers "not in the cache" for a missing name — the path librdkafka
//! already takes for an unknown topic (it logs it and skips the entry) —
//! and passes every other call through unchanged. Calls inside
//! `rdkafka_metadata_cache.c` itself are not wrapped; none of them passes a
//! missing name. Remove this when the vendored librdkafka checks the name.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::AtomicU64;

/// Lookups without a name the guard answered.
pub(crate) static GUARDED: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    /// librdkafka's own function (the linker's name for it under `--wrap`).
    fn __real_rd_kafka_metadata_cache_find(
        rk: *mut c_void,
        topic: *const c_char,
        valid: c_int,
    ) -> *mut c_void;
}

/// `rd_kafka_metadata_cache_find`, refusing a missing topic name.
///
/// # Safety
/// Called only by librdkafka, with its own arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_rd_kafka_metadata_cache_find(
    rk: *mut c_void,
    topic: *const c_char,
    valid: c_int,
) -> *mut c_void {
    if topic.is_null() {
        GUARDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!("kafka: librdkafka looked up a topic without a name (ignored)");
        return std::ptr::null_mut();
    }
    // SAFETY: librdkafka's arguments, passed on as they came.
    unsafe { __real_rd_kafka_metadata_cache_find(rk, topic, valid) }
}

/// Keeps the guard in every binary that links this crate: the linker looks
/// for it only once it has seen librdkafka, after this crate's objects.
#[used]
static KEEP: unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> *mut c_void =
    __wrap_rd_kafka_metadata_cache_find;

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, c_int, c_void};

    unsafe extern "C" {
        /// Routed to the guard by the linker, as librdkafka's own calls are.
        fn rd_kafka_metadata_cache_find(
            rk: *mut c_void,
            topic: *const c_char,
            valid: c_int,
        ) -> *mut c_void;
    }

    /// This test binary is linked like `ferry` (`build.rs`): a lookup without
    /// a name goes through the guard and finds nothing; a lookup with one
    /// reaches librdkafka.
    #[test]
    fn a_lookup_without_a_topic_name_finds_nothing() {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer =
            rdkafka::ClientConfig::new().create().expect("a client");
        let rk = consumer.client().native_ptr().cast();
        let before = super::GUARDED.load(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: a live client handle; the name is null on purpose, and
        // then a NUL-terminated string that outlives the call.
        let (none, named) = unsafe {
            (
                rd_kafka_metadata_cache_find(rk, std::ptr::null(), 1),
                rd_kafka_metadata_cache_find(rk, c"t".as_ptr(), 1),
            )
        };
        assert!(none.is_null() && named.is_null());
        assert_eq!(
            super::GUARDED.load(std::sync::atomic::Ordering::SeqCst),
            before + 1,
            "the call did not go through the guard: is the binary linked with --wrap?"
        );
    }
}
