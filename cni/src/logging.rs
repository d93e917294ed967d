//! Logs go to stderr or to a file, never to stdout (stdout carries only the
//! result or error object).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;

/// The two fields of the network configuration the logger needs.
#[derive(Deserialize)]
struct LogConf {
    #[serde(rename = "logLevel")]
    log_level: Option<String>,
    #[serde(rename = "logFile")]
    log_file: Option<String>,
}

/// The plugin's logger: `logFile`/`logLevel` from the config, else
/// `SLUICE_CNI_LOG` (an env filter) on stderr, default `warn`.
///
/// A plain level (`warn`, `debug`, ...), the usual case, gets
/// [`LineLogger`]: the plugin runs once per pod, and setting up
/// tracing-subscriber's registry and filter took about 0.1 ms of every
/// ADD. Anything else (per-module directives) gets the full `EnvFilter`.
pub fn init_plugin(stdin: &[u8]) {
    let conf = serde_json::from_slice::<LogConf>(stdin).ok();
    let file = conf.as_ref().and_then(|c| c.log_file.clone());
    let level = conf
        .and_then(|c| c.log_level)
        .or_else(|| std::env::var("SLUICE_CNI_LOG").ok())
        .unwrap_or_else(|| "warn".into());
    let writer: Box<dyn std::io::Write + Send> = match file.and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok()) {
        Some(f) => Box::new(f),
        None => Box::new(std::io::stderr()),
    };
    if let Ok(max) = level.trim().parse::<LevelFilter>() {
        let _ = tracing::subscriber::set_global_default(LineLogger { max, out: Mutex::new(writer) });
        return;
    }
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .with_writer(Mutex::new(writer))
        .try_init();
}

/// The daemon's logger: `RUST_LOG`-style filter on stderr, default `info`.
pub fn init_daemon() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// One line per event at or above a level, in the shape of
/// tracing-subscriber's default format (`<RFC 3339 UTC>  WARN message
/// key=value ...`). The plugin opens no spans; any span is accepted and ignored.
struct LineLogger {
    max: LevelFilter,
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl Subscriber for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = String::with_capacity(160);
        rfc3339_utc(&mut line, SystemTime::now());
        let _ = write!(line, " {:>5} ", event.metadata().level());
        let mut fields = Fields::default();
        event.record(&mut fields);
        line.push_str(&fields.message);
        line.push_str(&fields.rest);
        line.push('\n');
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

/// `2026-11-22T17:39:00.123456Z`.
fn rfc3339_utc(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        rfc3339_utc(&mut s, UNIX_EPOCH + Duration::from_micros(1_795_887_540_123_456));
        assert_eq!(s, "2026-11-28T17:39:00.123456Z");
        s.clear();
        rfc3339_utc(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // a leap day
        assert_eq!(s, "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn plain_levels_take_the_line_logger_and_directives_do_not() {
        assert_eq!("warn".parse::<LevelFilter>().ok(), Some(LevelFilter::WARN));
        assert_eq!("DEBUG".parse::<LevelFilter>().ok(), Some(LevelFilter::DEBUG));
        assert!("sluice_cni::ipam=debug".parse::<LevelFilter>().is_err());
    }
}
