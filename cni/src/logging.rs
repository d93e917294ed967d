//! Logs go to stderr or to a file, never to stdout (stdout carries only the
//! result or error object).

use std::fs::OpenOptions;
use std::sync::Mutex;

use serde_json::Value;
use tracing_subscriber::EnvFilter;

/// The plugin's logger: `logFile`/`logLevel` from the config, else
/// `SLUICE_CNI_LOG` (an env filter) on stderr, default `warn`.
pub fn init_plugin(stdin: &[u8]) {
    let conf = serde_json::from_slice::<Value>(stdin).ok();
    let field = |k: &str| conf.as_ref().and_then(|c| c.get(k)).and_then(Value::as_str).map(str::to_owned);
    let level = field("logLevel").or_else(|| std::env::var("SLUICE_CNI_LOG").ok()).unwrap_or_else(|| "warn".into());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if let Some(path) = field("logFile") {
        if let Ok(f) = OpenOptions::new().create(true).append(true).open(&path) {
            let _ = builder.with_ansi(false).with_writer(Mutex::new(f)).try_init();
            return;
        }
    }
    let _ = builder.with_writer(std::io::stderr).try_init();
}

/// The daemon's logger: `RUST_LOG`-style filter on stderr, default `info`.
pub fn init_daemon() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
