//! Benchmark inputs for `dnsperf`: manifests of a synthetic cluster, query
//! files, and the command lines `cargo xtask bench` runs.
//!
//! The procedure (every address on loopback, every run bounded):
//!
//! ```text
//! sluice-dns --manifests DIR --listen 127.0.0.54:5300 --zone upstream.test --ttl 3600 --upstream EMPTY_FILE   # the upstream
//! sluice-dns --manifests DIR --listen 127.0.0.53:5300 --upstream FILE_NAMING_127.0.0.54:5300 --metrics-addr 127.0.0.53:9153
//! dnsperf -s 127.0.0.53 -p 5300 -d cluster.queries -l 5 -c 8 -T 1            # max QPS, cluster names
//! dnsperf -s 127.0.0.53 -p 5300 -d cluster.queries -l 5 -c 8 -T 1 -Q 25000   # latency at a fixed rate
//! dnsperf -s 127.0.0.53 -p 5300 -d upstream.queries -l 5 -c 8 -T 1           # cached upstream names
//! ```
//!
//! dnsperf 2.10 prints "Queries per second" and the average and max latency;
//! for p99 add `-v` (one line per query ending in its latency in seconds) and
//! take the 99th percentile of the last column. The server's own
//! `sluice_dns_request_duration_seconds` histogram gives the in-process part.

use std::{fmt::Write as _, io, path::Path};

/// The zone of the benchmark's upstream: a second `sluice-dns` started with
/// `--zone upstream.test --ttl 3600` on the same [`cluster_manifests`], so the
/// forwarded names exist and stay cached for the whole run.
pub const UPSTREAM_ZONE: &str = "upstream.test";

/// Which names a query file asks for.
#[derive(Clone, Copy, Debug)]
pub enum QueryMix {
    /// ClusterIP A, headless A, SRV and PTR questions about the synthetic cluster.
    Cluster,
    /// Names outside the zone, in [`UPSTREAM_ZONE`] (answered by the upstream once, then from the cache).
    Upstream,
}

/// The manifests of `services` ClusterIP Services (and one 3-endpoint
/// headless Service) in namespace `bench`, addresses from the benchmark ranges.
pub fn cluster_manifests(services: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}");
    for i in 0..services {
        let _ = writeln!(
            s,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\n\
             spec: {{clusterIP: 198.19.{}.{}, ports: [{{name: http, port: 80, protocol: TCP}}]}}",
            (i / 250) % 256,
            i % 250 + 1
        );
    }
    let _ = writeln!(
        s,
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: headless, namespace: bench}}\n\
         spec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: headless-1, namespace: bench, labels: {{kubernetes.io/service-name: headless}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints:\n- {{addresses: [198.18.0.10], hostname: web-0}}\n- {{addresses: [198.18.0.11], hostname: web-1}}\n- {{addresses: [198.18.0.12], hostname: web-2}}"
    );
    s
}

/// The lines of a dnsperf query file (`NAME TYPE`).
pub fn queries(mix: QueryMix, services: usize, zone: &str, upstream_names: usize) -> String {
    let mut s = String::new();
    match mix {
        QueryMix::Cluster => {
            for i in 0..services.max(1) {
                let _ = writeln!(s, "svc-{i}.bench.svc.{zone} A");
                if i % 4 == 0 {
                    let _ = writeln!(s, "_http._tcp.svc-{i}.bench.svc.{zone} SRV");
                    let _ = writeln!(s, "{}.{}.19.198.in-addr.arpa PTR", i % 250 + 1, (i / 250) % 256);
                    let _ = writeln!(s, "headless.bench.svc.{zone} A");
                    let _ = writeln!(s, "web-1.headless.bench.svc.{zone} A");
                }
            }
        }
        QueryMix::Upstream => {
            for i in 0..upstream_names.max(1) {
                let _ = writeln!(s, "svc-{i}.bench.svc.{UPSTREAM_ZONE} A");
            }
        }
    }
    s
}

/// Writes a query file for `mix` to `path`.
///
/// # Errors
/// When the file cannot be written.
pub fn write_queryfile(path: &Path, mix: QueryMix, services: usize, zone: &str, upstream_names: usize) -> io::Result<()> {
    std::fs::write(path, queries(mix, services, zone, upstream_names))
}

/// The dnsperf command line for one run (rate `None`: as fast as it goes).
pub fn dnsperf_args(server: &str, port: u16, queryfile: &Path, seconds: u32, rate: Option<u32>) -> Vec<String> {
    let mut a = vec![
        "-s".into(),
        server.into(),
        "-p".into(),
        port.to_string(),
        "-d".into(),
        queryfile.display().to_string(),
        "-l".into(),
        seconds.min(10).to_string(),
        "-c".into(),
        "8".into(),
        "-T".into(),
        "1".into(),
    ];
    if let Some(q) = rate {
        a.push("-Q".into());
        a.push(q.to_string());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_queries_name_only_manifested_services() {
        let q = queries(QueryMix::Cluster, 8, "cluster.local", 0);
        assert!(q.contains("svc-7.bench.svc.cluster.local A"));
        assert!(q.contains("_http._tcp.svc-4.bench.svc.cluster.local SRV"));
        assert!(!q.contains("svc-8."));
        let m = cluster_manifests(8);
        assert!(m.contains("name: svc-7") && m.contains("198.19.0.8"));
        let (objects, warnings) = sluice_k8s::manifests::parse_documents("bench.yaml", &m);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(objects.len(), 1 + 8 + 2);
    }

    #[test]
    fn dnsperf_runs_are_bounded_to_ten_seconds() {
        let a = dnsperf_args("127.0.0.53", 5300, Path::new("q"), 60, Some(1000));
        let l = a.iter().position(|x| x == "-l").unwrap();
        assert_eq!(a[l + 1], "10");
    }
}
