//! The GGUF reader on arbitrary bytes: it must return a header or an error, never panic,
//! and never allocate more than the input can describe.
//!   cargo +nightly fuzz run gguf -- -rss_limit_mb=512
//! (seed the corpus with models/fixtures/gguf/*.gguf)
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(h) = bora_weights::gguf::parse(data) {
        for t in &h.tensors {
            assert!(t.start <= t.end && t.end <= data.len());
        }
    }
});
