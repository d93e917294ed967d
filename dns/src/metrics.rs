//! Prometheus metrics (text exposition format) kept in atomics, and the small
//! HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use hickory_proto::{op::ResponseCode, rr::RecordType};

const TYPES: [&str; 10] = ["A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "SOA", "NS", "ANY", "other"];
const RCODES: [&str; 7] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other"];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

fn type_index(t: RecordType) -> usize {
    match t {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::SRV => 2,
        RecordType::PTR => 3,
        RecordType::TXT => 4,
        RecordType::CNAME => 5,
        RecordType::SOA => 6,
        RecordType::NS => 7,
        RecordType::ANY => 8,
        _ => 9,
    }
}

fn rcode_index(r: ResponseCode) -> usize {
    match r {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        _ => 6,
    }
}

/// Counters of the server.
#[derive(Default)]
pub struct Metrics {
    queries: [[AtomicU64; RCODES.len()]; TYPES.len()],
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    pub dropped: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub upstream_queries: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub upstream_tcp: AtomicU64,
    /// Forwarded questions answered SERVFAIL because `--max-inflight-forwards` were waiting.
    pub forward_rejected: AtomicU64,
    /// TCP connections closed at once because `--max-tcp-connections` were open.
    pub tcp_rejected: AtomicU64,
    /// Out-of-zone questions REFUSED: the client is outside `--allow-recursion`.
    pub recursion_refused: AtomicU64,
    /// Bytes held by the forwarding cache (set by the server).
    pub cache_bytes: AtomicU64,
    pub model_names: AtomicU64,
    pub model_updates: AtomicU64,
    pub synced: AtomicBool,
    pub loop_detected: AtomicBool,
}

impl Metrics {
    /// Counts one answered query.
    pub fn observe(&self, qtype: RecordType, rcode: ResponseCode, took: Duration) {
        self.queries[type_index(qtype)][rcode_index(rcode)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Queries answered so far with `qtype` and `rcode`.
    pub fn queries(&self, qtype: RecordType, rcode: ResponseCode) -> u64 {
        self.queries[type_index(qtype)][rcode_index(rcode)].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.push_str("# HELP sluice_dns_queries_total DNS queries answered, by question type and response code.\n");
        s.push_str("# TYPE sluice_dns_queries_total counter\n");
        for (ti, t) in TYPES.iter().enumerate() {
            for (ri, r) in RCODES.iter().enumerate() {
                let v = get(&self.queries[ti][ri]);
                if v > 0 {
                    let _ = writeln!(s, "sluice_dns_queries_total{{type=\"{t}\",rcode=\"{r}\"}} {v}");
                }
            }
        }
        s.push_str("# HELP sluice_dns_request_duration_seconds Time from receiving a query to having its answer.\n");
        s.push_str("# TYPE sluice_dns_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += get(&self.latency[i]);
            let _ = writeln!(s, "sluice_dns_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += get(&self.latency[BUCKETS.len()]);
        let _ = writeln!(s, "sluice_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        #[expect(clippy::cast_precision_loss, reason = "a sum of nanoseconds shown in seconds")]
        let sum = get(&self.latency_sum_ns) as f64 / 1e9;
        let _ = writeln!(s, "sluice_dns_request_duration_seconds_sum {sum}");
        let _ = writeln!(s, "sluice_dns_request_duration_seconds_count {cumulative}");
        let counters = [
            ("sluice_dns_dropped_total", "Packets dropped unanswered (too short, or responses).", get(&self.dropped)),
            ("sluice_dns_cache_hits_total", "Forwarded names answered from the cache.", get(&self.cache_hits)),
            ("sluice_dns_cache_misses_total", "Forwarded names not in the cache.", get(&self.cache_misses)),
            ("sluice_dns_upstream_queries_total", "Queries sent to upstreams.", get(&self.upstream_queries)),
            ("sluice_dns_upstream_errors_total", "Upstream queries that failed or timed out.", get(&self.upstream_errors)),
            ("sluice_dns_upstream_tcp_retries_total", "Truncated upstream answers retried over TCP.", get(&self.upstream_tcp)),
            ("sluice_dns_forward_rejected_total", "Forwarded questions answered SERVFAIL because too many were in flight.", get(&self.forward_rejected)),
            ("sluice_dns_tcp_rejected_total", "TCP connections refused because too many were open.", get(&self.tcp_rejected)),
            ("sluice_dns_recursion_refused_total", "Out-of-zone questions refused: the client is not in an allowed network.", get(&self.recursion_refused)),
            ("sluice_dns_model_updates_total", "Record model rebuilds from cluster snapshots.", get(&self.model_updates)),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges = [
            ("sluice_dns_model_names", "Owner names in the record model.", get(&self.model_names)),
            ("sluice_dns_cache_bytes", "Bytes held by the forwarding cache.", get(&self.cache_bytes)),
            ("sluice_dns_synced", "1 once the first full sync of the cluster happened.", u64::from(self.synced.load(Ordering::Relaxed))),
            ("sluice_dns_forward_loop_detected", "1 when forwarding was disabled because the upstreams loop back.", u64::from(self.loop_detected.load(Ordering::Relaxed))),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        s
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (first
/// sync done) on the shared node endpoint ([`sluice_node::http`]) until the
/// task is dropped.
pub async fn serve_http(endpoint: sluice_node::http::Endpoint, metrics: Arc<Metrics>) {
    struct Probes(Arc<Metrics>);
    impl sluice_node::http::Probes for Probes {
        fn metrics(&self) -> String {
            self.0.render()
        }
        fn ready(&self) -> Result<(), String> {
            if self.0.synced.load(Ordering::Relaxed) { Ok(()) } else { Err("not synced".into()) }
        }
    }
    endpoint.serve(Arc::new(Probes(metrics))).await;
}

/// Binds the metrics endpoint.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind_http(addr: SocketAddr) -> std::io::Result<sluice_node::http::Endpoint> {
    sluice_node::http::Endpoint::bind(addr, sluice_node::http::Limits::default()).await
}
