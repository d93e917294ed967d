//! Logging setup shared by the daemons: `tracing` to stderr, filtered by
//! `RUST_LOG` (default given by the daemon), colours only on a terminal.

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG`
/// is unset or invalid (e.g. `"info"`, `"info,hickory_server=warn"`). A
/// second call (tests) leaves the first subscriber in place.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
