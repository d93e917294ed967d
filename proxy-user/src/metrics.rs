//! Prometheus metrics and the health endpoints (`/metrics`, `/healthz`,
//! `/readyz`). The HTTP side is a few lines over a tokio listener: three
//! fixed GET routes do not need a web framework on a node agent.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tracing::warn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub programming_latency: Histogram,
    pub frontends: Gauge,
    pub backends: Gauge,
    pub invalid_objects: Gauge,
    pub map_fill: Family<MapLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub errors: Family<KindLabel, Counter>,
    ready: AtomicBool,
    /// Unix seconds of the last loop iteration (liveness).
    heartbeat: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice_proxy");
        // 100 us .. ~52 s
        let sync_duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-4, 2.0, 20));
        let programming_latency =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-3, 2.0, 16));
        let frontends = Gauge::default();
        let backends = Gauge::default();
        let invalid_objects = Gauge::default();
        let map_fill = Family::default();
        let errors = Family::default();
        registry.register(
            "sync_duration_seconds",
            "Time to translate a snapshot and apply the diff to the dataplane",
            sync_duration.clone(),
        );
        registry.register(
            "network_programming_duration_seconds",
            "From an EndpointSlice change (endpoints.kubernetes.io/last-change-trigger-time) to the map written",
            programming_latency.clone(),
        );
        registry.register("frontends", "Frontends programmed", frontends.clone());
        registry.register("backends", "Backends programmed", backends.clone());
        registry.register("invalid_objects", "Objects or parts skipped as invalid", invalid_objects.clone());
        registry.register("map_fill_ratio", "Entries used / max entries per map", map_fill.clone());
        registry.register("errors", "Errors by kind", errors.clone());
        Self {
            registry,
            sync_duration,
            programming_latency,
            frontends,
            backends,
            invalid_objects,
            map_fill,
            errors,
            ready: AtomicBool::new(false),
            heartbeat: AtomicU64::new(now_secs()),
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn beat(&self) {
        self.heartbeat.store(now_secs(), Ordering::Relaxed);
    }

    fn live(&self, max_silence: u64) -> bool {
        now_secs().saturating_sub(self.heartbeat.load(Ordering::Relaxed)) <= max_silence
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics`, `/healthz` (the loop ran within `max_silence` seconds)
/// and `/readyz` (the first full sync is programmed) on the shared node
/// endpoint ([`sluice_node::http`]) until the runtime ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, max_silence: u64) -> std::io::Result<()> {
    struct Probes(Arc<Metrics>, u64);
    impl sluice_node::http::Probes for Probes {
        fn metrics(&self) -> String {
            self.0.encode()
        }
        fn live(&self) -> Result<(), String> {
            if self.0.live(self.1) { Ok(()) } else { Err("reconcile loop stalled".into()) }
        }
        fn ready(&self) -> Result<(), String> {
            if self.0.is_ready() { Ok(()) } else { Err("waiting for the first full sync".into()) }
        }
    }
    let endpoint = sluice_node::http::Endpoint::bind(addr, sluice_node::http::Limits::default()).await?;
    endpoint.spawn(Arc::new(Probes(metrics, max_silence)));
    Ok(())
}

/// Parses `endpoints.kubernetes.io/last-change-trigger-time` (RFC 3339, UTC "Z").
pub fn trigger_time(value: &str) -> Option<SystemTime> {
    parse_rfc3339_utc(value.trim())
}

fn parse_rfc3339_utc(s: &str) -> Option<SystemTime> {
    // YYYY-MM-DDTHH:MM:SS[.frac]Z
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mut nanos = 0u32;
    if b.get(19) == Some(&b'.') {
        let frac: String = s[20..].chars().take_while(char::is_ascii_digit).collect();
        let padded = format!("{frac:0<9}");
        nanos = padded.get(..9)?.parse().ok()?;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

/// Logs and counts an error.
pub fn record_error(metrics: &Metrics, kind: &str, err: &dyn std::fmt::Display) {
    metrics.error(kind);
    warn!(kind, error = %err, "error");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_time_parses_kubernetes_timestamps() {
        let t = parse_rfc3339_utc("2026-11-22T06:00:00Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_795_327_200);
        let t = parse_rfc3339_utc("1970-01-01T00:00:01.5Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_millis(), 1500);
        assert!(parse_rfc3339_utc("garbage").is_none());
    }

    #[test]
    fn registry_encodes_every_metric() {
        let m = Metrics::new();
        m.error("apply");
        m.map_fill.get_or_create(&MapLabel { map: "SLC_SVC4".into() }).set(0.5);
        let text = m.encode();
        for name in [
            "sluice_proxy_sync_duration_seconds",
            "sluice_proxy_network_programming_duration_seconds",
            "sluice_proxy_frontends",
            "sluice_proxy_backends",
            "sluice_proxy_map_fill_ratio",
            "sluice_proxy_errors_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
