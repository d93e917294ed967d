//! The UDP and TCP query path on arbitrary bytes: must answer FORMERR, drop,
//! or answer properly, never panic. `cargo +nightly fuzz run query` in dns/.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_dns::{engine::Engine, testing};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(testing::engine_with_cluster)
}

fuzz_target!(|data: &[u8]| {
    testing::fuzz_one(engine(), data);
});
