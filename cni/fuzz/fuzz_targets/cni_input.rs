//! CNI config + environment parsing: what a runtime hands the plugin
//! (`CNI_*` variables and the network configuration on stdin) through
//! every check the plugin makes before touching the system.
//!
//! Input: `KEY=VALUE` lines (the environment), a NUL byte, then stdin.
//! Besides "never panics", the target asserts what the plugin relies on:
//! errors are spec error objects with a known code that survive a JSON
//! round trip; an accepted config's version is one the plugin supports;
//! the IPAM store of any network name stays directly under its data dir;
//! a `prevResult` that decodes can be re-encoded for every version.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/spec.rs"]
#[allow(dead_code)]
mod spec;

#[path = "../../src/invocation.rs"]
#[allow(dead_code)]
mod invocation;

#[path = "../../src/ipam.rs"]
#[allow(dead_code)]
mod ipam;

#[path = "../../src/plugin/version.rs"]
#[allow(dead_code)]
mod version;

use invocation::{prepare, Command, Prepared};
use spec::{AddResult, Env, Error, Version, SUPPORTED_VERSIONS};

/// Codes input checking may answer with (the spec's 1, 4, 6, 7).
const INPUT_CODES: [u32; 4] = [1, 4, 6, 7];

fn env_of(block: &[u8]) -> Env {
    let text = String::from_utf8_lossy(block);
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    // The last assignment wins, as in a shell.
    Env::from_lookup(|k| vars.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone()))
}

fuzz_target!(|data: &[u8]| {
    let (block, stdin) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let env = env_of(block);
    match prepare(&env, stdin) {
        Err(e) => {
            assert!(INPUT_CODES.contains(&e.code), "unexpected code {} from input checks: {e:?}", e.code);
            assert!(!e.msg.is_empty(), "error without msg: {e:?}");
            let json = serde_json::to_vec(&e).expect("errors serialise");
            let back: Error = serde_json::from_slice(&json).expect("errors parse back");
            assert_eq!(back, e);
        }
        Ok(Prepared::Version) => {
            let v = version::version(stdin);
            let asked = v["cniVersion"].as_str().expect("cniVersion is a string");
            assert!(SUPPORTED_VERSIONS.contains(&asked), "VERSION answered {asked:?}");
        }
        Ok(Prepared::Command { command, conf, version }) => {
            assert_eq!(Version::parse_supported(&conf.cni_version).ok(), Some(version));
            if matches!(command, Command::Gc | Command::Status) {
                assert!(version.at_least_1_1(), "{command:?} passed with {}", conf.cni_version);
            }
            if command == Command::Add {
                assert!(env.validate_ids().is_ok());
                assert!(!env.netns.is_empty());
            }
            let data_dir = std::path::Path::new(conf.data_dir());
            let store = ipam::Store::new(data_dir, &conf.name);
            assert_eq!(store.dir().parent(), Some(data_dir), "store of {:?} escapes {}", conf.name, data_dir.display());
            let _ = (conf.delegated_ipam(), conf.gc_valid(), conf.subnet_file());
            if let Some(prev) = conf.prev_result.clone() {
                if let Ok(r) = serde_json::from_value::<AddResult>(prev) {
                    for v in SUPPORTED_VERSIONS {
                        let shaped = r.clone().for_version(Version::parse_supported(v).expect("supported"), v);
                        serde_json::to_vec(&shaped).expect("results serialise");
                    }
                }
            }
        }
    }
});
