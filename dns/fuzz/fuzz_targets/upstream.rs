//! Upstream responses on arbitrary bytes: walked, cached-TTL computed and
//! relayed to a client as bytes; a relayed message must be well formed and
//! within the client's limit. `cargo +nightly fuzz run upstream` in dns/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_dns::testing::fuzz_upstream(data);
});
