//! End-to-end tests of `sluice-dns`: the real binary on a loopback address,
//! reading a temporary manifests directory, queried with `dig`; a fake
//! upstream (a tiny DNS responder in this file) on another loopback address.
//! The machine's own resolver is never used: every server gets `--upstream`
//! naming a server the test started. Each test runs in a network namespace
//! of its own (loopback only); needs root, skipped otherwise.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

// ---------------------------------------------------------------- harness


/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("slc-dns-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("manifests")).expect("creating the test directory");
        Self(p)
    }
    fn manifests(&self) -> PathBuf {
        self.0.join("manifests")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `sluice-dns`, killed on drop.
struct Dns {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on `ip` for both UDP and TCP (probed, then released).
fn free_port(ip: &str) -> u16 {
    bound_pair(ip).0.local_addr().unwrap().port()
}

fn write_upstreams(dir: &TempDir, upstreams: &[SocketAddr]) -> PathBuf {
    let path = dir.0.join("upstream.conf");
    let text: String = upstreams.iter().map(|u| format!("nameserver {u}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn start_dns_at(dir: &TempDir, addr: SocketAddr, upstreams: &[SocketAddr], extra: &[&str]) -> Dns {
    let upstream = write_upstreams(dir, upstreams);
    let metrics = SocketAddr::new(addr.ip(), free_port(&addr.ip().to_string()));
    let log = dir.0.join(format!("sluice-dns-{}.log", addr.port()));
    let bin = tests::workspace_bin("sluice-dns");
    let child = Command::new(&bin)
        .arg("--manifests")
        .arg(dir.manifests())
        .args(["--listen", &addr.to_string()])
        .arg("--upstream")
        .arg(&upstream)
        .args(["--metrics-addr", &metrics.to_string(), "--upstream-timeout-ms", "500", "--threads", "2"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let dns = Dns { child, addr, metrics, log };
    // Ready when /readyz says so (the first snapshot is read before sockets bind).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if http_get(dns.metrics, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return dns;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("sluice-dns did not become ready within 10 s; log:\n{}", std::fs::read_to_string(&dns.log).unwrap_or_default());
}

fn start_dns(dir: &TempDir, ip: &str, upstreams: &[SocketAddr], extra: &[&str]) -> Dns {
    let addr = SocketAddr::new(ip.parse().unwrap(), free_port(ip));
    start_dns_at(dir, addr, upstreams, extra)
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `dig` against the server; returns its full output.
fn dig(dns: &Dns, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", dns.addr.ip()))
        .args(["-p", &dns.addr.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("running dig (Debian package bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The records of the answer section, `NAME TTL CLASS TYPE DATA` with tabs as spaces.
fn answers(dig_out: &str) -> Vec<String> {
    section(dig_out, "ANSWER")
}

fn section(dig_out: &str, name: &str) -> Vec<String> {
    let header = format!(";; {name} SECTION:");
    let mut lines = dig_out.lines().skip_while(|l| !l.starts_with(&header)).skip(1);
    let mut out = Vec::new();
    for l in lines.by_ref() {
        if l.trim().is_empty() {
            break;
        }
        out.push(l.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    out
}

fn status(dig_out: &str) -> String {
    dig_out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("no status in dig output:\n{dig_out}"))
}

fn flags(dig_out: &str) -> String {
    dig_out.lines().find_map(|l| l.strip_prefix(";; flags: ")).map(|s| s.split(';').next().unwrap_or("").to_owned()).unwrap_or_default()
}

// ---------------------------------------------------------------- fake upstream

/// A tiny authoritative-looking DNS server for names outside the cluster:
/// `nx*` names are NXDOMAIN (with an SOA), `big.*` is 60 A records (TC over
/// UDP, full over TCP), anything else one A record 192.0.2.1 with TTL 300.
struct FakeUpstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn qname_end(q: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let len = usize::from(*q.get(i)?);
        if len == 0 {
            return Some(i + 1);
        }
        i += 1 + len;
    }
}

fn qname_text(q: &[u8]) -> String {
    let mut i = 12;
    let mut labels = Vec::new();
    while let Some(&len) = q.get(i) {
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + usize::from(len)]).to_ascii_lowercase());
        i += 1 + usize::from(len);
    }
    labels.join(".")
}

fn fake_answer(q: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let end = qname_end(q)? + 4;
    if q.len() < end {
        return None;
    }
    let name = qname_text(q);
    let mut r = Vec::with_capacity(1024);
    r.extend_from_slice(&q[..2]);
    let (rcode, count, tc) = if name.starts_with("nx") {
        (3u8, 0u16, false)
    } else if name.starts_with("big.") && !tcp {
        (0, 0, true)
    } else if name.starts_with("big.") {
        (0, 60, false)
    } else {
        (0, 1, false)
    };
    r.push(0x81 | if tc { 0x02 } else { 0 }); // QR, RD (+TC)
    r.push(0x80 | rcode); // RA
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&count.to_be_bytes());
    r.extend_from_slice(&u16::from(rcode == 3).to_be_bytes());
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&q[12..end]);
    for i in 0..count {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        r.extend_from_slice(&300u32.to_be_bytes());
        r.extend_from_slice(&[0, 4, 192, 0, 2, (i % 250 + 1) as u8]);
    }
    if rcode == 3 {
        // SOA: owner root, TTL 60, minimum 60.
        r.extend_from_slice(&[0, 0, 6, 0, 1]);
        r.extend_from_slice(&60u32.to_be_bytes());
        r.extend_from_slice(&22u16.to_be_bytes());
        r.extend_from_slice(&[0, 0]);
        for v in [1u32, 60, 60, 60, 60] {
            r.extend_from_slice(&v.to_be_bytes());
        }
    }
    Some(r)
}

/// A UDP socket and a TCP listener on one port of `ip`, bound without
/// letting go of the port in between (sluice-dns's own upstream sockets may
/// take a port [`free_port`] just probed).
fn bound_pair(ip: &str) -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0)).expect("binding a UDP socket");
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind((ip, port)) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

fn start_upstream(ip: &str) -> FakeUpstream {
    let (udp, tcp) = bound_pair(ip);
    let port = udp.local_addr().unwrap().port();
    udp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (queries, stop) = (queries.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, src)) = udp.recv_from(&mut buf) {
                    queries.fetch_add(1, Ordering::Relaxed);
                    if let Some(r) = fake_answer(&buf[..n], false) {
                        let _ = udp.send_to(&r, src);
                    }
                }
                if let Ok((mut s, _)) = tcp.accept() {
                    queries.fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_ok() {
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut q).is_ok() {
                            if let Some(r) = fake_answer(&q, true) {
                                let mut framed = u16::try_from(r.len()).unwrap().to_be_bytes().to_vec();
                                framed.extend_from_slice(&r);
                                let _ = s.write_all(&framed);
                            }
                        }
                    }
                }
            }
        });
    }
    FakeUpstream { addr: SocketAddr::new(ip.parse().unwrap(), port), queries, stop }
}

// ---------------------------------------------------------------- manifests

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec: {clusterIP: 198.19.0.10, clusterIPs: [198.19.0.10, '2001:db8:2::10'], ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: nginx, namespace: prod}
spec: {clusterIP: None, ports: [{name: web, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: nginx-a, namespace: prod, labels: {kubernetes.io/service-name: nginx}}
addressType: IPv4
ports: [{name: web, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.0.20], hostname: web-0}
- {addresses: [198.18.0.21], hostname: web-1}
- {addresses: [198.18.0.22], hostname: web-2, conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: prod}
spec: {type: ExternalName, externalName: db.example.org}
";

fn many_endpoints(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: many, namespace: prod}\nspec: {clusterIP: None}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: many-a, namespace: prod, labels: {kubernetes.io/service-name: many}}\naddressType: IPv4\nendpoints:\n",
    );
    for i in 0..n {
        s.push_str(&format!("- {{addresses: [198.18.1.{}]}}\n", i + 1));
    }
    s
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write-then-rename so the watcher never sees a half-written file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

// ---------------------------------------------------------------- tests

#[test]
fn dns_cluster_records_follow_the_specification() {
    let Some(_netns) = tests::ThreadNetns::enter("cluster_reco") else { return };
    let dir = TempDir::new("spec");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_upstream("127.0.0.71");
    let dns = start_dns(&dir, "127.0.0.70", &[up.addr], &[]);

    let out = dig(&dns, &["web.prod.svc.cluster.local", "A"]);
    assert_eq!(answers(&out), vec!["web.prod.svc.cluster.local. 5 IN A 198.19.0.10"], "ClusterIP A:\n{out}");
    assert!(flags(&out).contains("aa"), "cluster answers are authoritative:\n{out}");

    let out = dig(&dns, &["web.prod.svc.cluster.local", "AAAA"]);
    assert_eq!(answers(&out), vec!["web.prod.svc.cluster.local. 5 IN AAAA 2001:db8:2::10"], "dual-stack AAAA:\n{out}");

    let out = dig(&dns, &["WEB.Prod.svc.Cluster.Local", "A"]);
    assert_eq!(answers(&out), vec!["WEB.Prod.svc.Cluster.Local. 5 IN A 198.19.0.10"], "case kept:\n{out}");

    let out = dig(&dns, &["_http._tcp.web.prod.svc.cluster.local", "SRV"]);
    assert_eq!(answers(&out), vec!["_http._tcp.web.prod.svc.cluster.local. 5 IN SRV 0 100 80 web.prod.svc.cluster.local."], "SRV:\n{out}");
    assert!(section(&out, "ADDITIONAL").iter().any(|l| l.ends_with("A 198.19.0.10")), "SRV target address in additional:\n{out}");

    let out = dig(&dns, &["-x", "198.19.0.10"]);
    assert_eq!(answers(&out), vec!["10.0.19.198.in-addr.arpa. 5 IN PTR web.prod.svc.cluster.local."], "PTR:\n{out}");

    let out = dig(&dns, &["dns-version.cluster.local", "TXT"]);
    assert_eq!(answers(&out), vec!["dns-version.cluster.local. 5 IN TXT \"1.1.0\""], "dns-version:\n{out}");

    // Headless, StatefulSet-style.
    let out = dig(&dns, &["nginx.prod.svc.cluster.local", "A"]);
    let mut got = answers(&out);
    got.sort();
    assert_eq!(
        got,
        vec!["nginx.prod.svc.cluster.local. 5 IN A 198.18.0.20", "nginx.prod.svc.cluster.local. 5 IN A 198.18.0.21"],
        "headless A per ready endpoint:\n{out}"
    );
    let out = dig(&dns, &["web-0.nginx.prod.svc.cluster.local", "A"]);
    assert_eq!(answers(&out), vec!["web-0.nginx.prod.svc.cluster.local. 5 IN A 198.18.0.20"], "hostname record:\n{out}");
    let out = dig(&dns, &["_web._tcp.nginx.prod.svc.cluster.local", "SRV"]);
    assert_eq!(answers(&out).len(), 2, "SRV per ready endpoint:\n{out}");
    let out = dig(&dns, &["-x", "198.18.0.21"]);
    assert_eq!(answers(&out), vec!["21.0.18.198.in-addr.arpa. 5 IN PTR web-1.nginx.prod.svc.cluster.local."], "endpoint PTR:\n{out}");

    // Negative answers.
    for (name, qtype, want) in [
        ("web-2.nginx.prod.svc.cluster.local", "A", "NXDOMAIN"),
        ("nope.prod.svc.cluster.local", "A", "NXDOMAIN"),
        ("web.nonexistent.svc.cluster.local", "A", "NXDOMAIN"),
        ("web.prod.svc.cluster.local", "TXT", "NOERROR"),
        ("prod.svc.cluster.local", "A", "NOERROR"),
    ] {
        let out = dig(&dns, &[name, qtype]);
        assert_eq!(status(&out), want, "{name} {qtype}:\n{out}");
        assert!(answers(&out).is_empty(), "{name} {qtype}: no answers:\n{out}");
        let auth = section(&out, "AUTHORITY");
        assert!(
            auth.len() == 1 && auth[0].starts_with("cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local."),
            "{name} {qtype}: SOA in the authority section:\n{out}"
        );
    }

    // SOA and NS at the apex; pods insecure.
    assert!(answers(&dig(&dns, &["cluster.local", "NS"])).iter().any(|l| l.ends_with("NS ns.dns.cluster.local.")));
    let out = dig(&dns, &["198-18-0-5.prod.pod.cluster.local", "A"]);
    assert_eq!(answers(&out), vec!["198-18-0-5.prod.pod.cluster.local. 5 IN A 198.18.0.5"], "pod record:\n{out}");

    // The same over TCP (hickory-server's TCP path).
    let out = dig(&dns, &["+tcp", "web-1.nginx.prod.svc.cluster.local", "A"]);
    assert_eq!(answers(&out), vec!["web-1.nginx.prod.svc.cluster.local. 5 IN A 198.18.0.21"], "over TCP:\n{out}");
    assert!(up.queries.load(Ordering::Relaxed) <= 3, "only loop probes may reach the upstream for cluster names");
}

#[test]
fn dns_large_answers_truncate_over_udp_and_complete_over_tcp() {
    let Some(_netns) = tests::ThreadNetns::enter("large_answer") else { return };
    let dir = TempDir::new("tc");
    write(&dir.manifests(), "many.yaml", &many_endpoints(100));
    let up = start_upstream("127.0.0.73");
    let dns = start_dns(&dir, "127.0.0.72", &[up.addr], &[]);

    let out = dig(&dns, &["+ignore", "+noedns", "many.prod.svc.cluster.local", "A"]);
    assert!(flags(&out).contains("tc"), "a 100-record answer over UDP without EDNS sets TC:\n{out}");
    assert!(answers(&out).len() < 100, "a truncated answer cannot hold all records:\n{out}");

    let out = dig(&dns, &["+ignore", "+bufsize=4096", "many.prod.svc.cluster.local", "A"]);
    assert!(out.contains("udp: 1232"), "EDNS answered with our 1232-byte limit:\n{out}");
    assert!(flags(&out).contains("tc"), "100 records exceed 1232 bytes:\n{out}");

    let out = dig(&dns, &["many.prod.svc.cluster.local", "A"]);
    assert_eq!(answers(&out).len(), 100, "dig retries over TCP and gets every record:\n{out}");
}

#[test]
fn dns_edns_versions_other_than_zero_get_badvers() {
    let Some(_netns) = tests::ThreadNetns::enter("eversions_ot") else { return };
    let dir = TempDir::new("edns");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_upstream("127.0.0.75");
    let dns = start_dns(&dir, "127.0.0.74", &[up.addr], &[]);
    let out = dig(&dns, &["+edns=1", "+noednsnegotiation", "web.prod.svc.cluster.local", "A"]);
    assert_eq!(status(&out), "BADVERS", "EDNS version 1:\n{out}");
}

#[test]
fn dns_forwards_other_names_and_caches_positive_and_negative_answers() {
    let Some(_netns) = tests::ThreadNetns::enter("forwards_oth") else { return };
    let dir = TempDir::new("fwd");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_upstream("127.0.0.77");
    let dns = start_dns(&dir, "127.0.0.76", &[up.addr], &[]);
    thread::sleep(Duration::from_millis(300)); // let the loop probe go by
    let base = up.queries.load(Ordering::Relaxed);

    let out = dig(&dns, &["www.example.org", "A"]);
    assert_eq!(answers(&out), vec!["www.example.org. 300 IN A 192.0.2.1"], "forwarded:\n{out}");
    assert!(!flags(&out).contains("aa"), "forwarded answers are not authoritative:\n{out}");
    let out = dig(&dns, &["WWW.Example.ORG", "A"]);
    assert_eq!(answers(&out).len(), 1, "cached:\n{out}");
    assert!(answers(&out)[0].starts_with("WWW.Example.ORG. "), "cached answer keeps the question's case:\n{out}");
    assert_eq!(up.queries.load(Ordering::Relaxed) - base, 1, "the second query is answered from the cache");

    let out = dig(&dns, &["nx.example.org", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "NXDOMAIN forwarded:\n{out}");
    let out = dig(&dns, &["nx.example.org", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "NXDOMAIN from the negative cache:\n{out}");
    assert_eq!(up.queries.load(Ordering::Relaxed) - base, 2, "negative answers are cached");

    // Truncated upstream answer: sluice-dns retries over TCP, the client gets all of it over TCP.
    let out = dig(&dns, &["+tcp", "big.example.org", "A"]);
    assert_eq!(answers(&out).len(), 60, "upstream TC retried over TCP:\n{out}");

    // ExternalName: the CNAME plus the target resolved upstream, in one answer.
    let out = dig(&dns, &["ext.prod.svc.cluster.local", "A"]);
    assert_eq!(
        answers(&out),
        vec!["ext.prod.svc.cluster.local. 5 IN CNAME db.example.org.", "db.example.org. 300 IN A 192.0.2.1"],
        "ExternalName:\n{out}"
    );

    let metrics = http_get(dns.metrics, "/metrics").expect("metrics");
    assert!(metrics.contains("sluice_dns_cache_hits_total 2"), "cache hits counted:\n{metrics}");
    assert!(metrics.contains("sluice_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"} 2"), "{metrics}");
    assert!(metrics.contains("sluice_dns_request_duration_seconds_bucket{le=\"+Inf\"}"), "{metrics}");
}

#[test]
fn dns_refuses_to_forward_to_itself() {
    let Some(_netns) = tests::ThreadNetns::enter("refuses_to_f") else { return };
    let dir = TempDir::new("self");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let addr: SocketAddr = SocketAddr::new("127.0.0.78".parse().unwrap(), free_port("127.0.0.78"));
    let dns = start_dns_at(&dir, addr, &[addr], &[]);
    let started = Instant::now();
    let out = dig(&dns, &["www.example.org", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "no usable upstream:\n{out}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered at once, not after a loop");
    let log = std::fs::read_to_string(&dns.log).unwrap();
    assert!(log.contains("refusing upstreams that are this server itself"), "log says why:\n{log}");
    // Cluster names are unaffected.
    assert_eq!(status(&dig(&dns, &["web.prod.svc.cluster.local", "A"])), "NOERROR");
}

#[test]
fn dns_detects_a_forwarding_loop_through_another_server() {
    let Some(_netns) = tests::ThreadNetns::enter("detects_a_fo") else { return };
    let dir_a = TempDir::new("loop-a");
    let dir_b = TempDir::new("loop-b");
    let a: SocketAddr = SocketAddr::new("127.0.0.79".parse().unwrap(), free_port("127.0.0.79"));
    let b: SocketAddr = SocketAddr::new("127.0.0.80".parse().unwrap(), free_port("127.0.0.80"));
    let dns_a = start_dns_at(&dir_a, a, &[b], &[]);
    let dns_b = start_dns_at(&dir_b, b, &[a], &[]);
    // Each server's probe travels to the other and back: both must notice.
    let deadline = Instant::now() + Duration::from_secs(5);
    let detected = |d: &Dns| {
        http_get(d.metrics, "/metrics").is_some_and(|m| m.contains("sluice_dns_forward_loop_detected 1"))
    };
    while Instant::now() < deadline && !(detected(&dns_a) && detected(&dns_b)) {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(detected(&dns_a), "A should detect the loop A -> B -> A; log:\n{}", std::fs::read_to_string(&dns_a.log).unwrap());
    assert!(detected(&dns_b), "B should detect the loop B -> A -> B");
    let out = dig(&dns_a, &["www.example.org", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "forwarding is off once a loop is seen:\n{out}");
}

#[test]
fn dns_answers_follow_manifest_changes() {
    let Some(_netns) = tests::ThreadNetns::enter("answers_foll") else { return };
    let dir = TempDir::new("fresh");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_upstream("127.0.0.82");
    let dns = start_dns(&dir, "127.0.0.81", &[up.addr], &[]);
    let short = |name: &str| {
        let out = Command::new("dig")
            .args([&format!("@{}", dns.addr.ip()), "-p", &dns.addr.port().to_string(), "+short", "+time=1", "+tries=1", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(short("web.prod.svc.cluster.local"), "198.19.0.10");
    assert_eq!(short("new.prod.svc.cluster.local"), "", "not there yet");

    write(
        &dir.manifests(),
        "cluster.yaml",
        &CLUSTER.replace("clusterIP: 198.19.0.10, clusterIPs: [198.19.0.10,", "clusterIP: 198.19.0.99, clusterIPs: [198.19.0.99,"),
    );
    write(
        &dir.manifests(),
        "new.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: new, namespace: prod}\nspec: {clusterIP: 198.19.0.77}\n",
    );
    // The change must show within a second (the target is 100 ms; no timing is asserted here).
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut seen = (String::new(), String::new());
    while Instant::now() < deadline {
        seen = (short("web.prod.svc.cluster.local"), short("new.prod.svc.cluster.local"));
        if seen.0 == "198.19.0.99" && seen.1 == "198.19.0.77" {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen, ("198.19.0.99".into(), "198.19.0.77".into()), "changed and added Services answered within a second");

    std::fs::remove_file(dir.manifests().join("new.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut st = String::new();
    while Instant::now() < deadline {
        st = status(&dig(&dns, &["new.prod.svc.cluster.local", "A"]));
        if st == "NXDOMAIN" {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(st, "NXDOMAIN", "a deleted Service disappears (no stale positive answer)");
}

#[test]
fn dns_malformed_packets_get_formerr_or_are_dropped_and_never_crash_the_server() {
    let Some(_netns) = tests::ThreadNetns::enter("malformed_pa") else { return };
    let dir = TempDir::new("bad");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_upstream("127.0.0.84");
    let dns = start_dns(&dir, "127.0.0.83", &[up.addr], &[]);
    let sock = UdpSocket::bind("127.0.0.83:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    sock.connect(dns.addr).unwrap();
    let mut buf = [0u8; 2048];

    // Header then garbage: FORMERR with the same id.
    sock.send(&[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 63, 1, 2]).unwrap();
    let n = sock.recv(&mut buf).expect("a FORMERR answer to a readable header");
    assert_eq!(&buf[..2], &[0xab, 0xcd], "same id");
    assert_eq!(buf[2] & 0x80, 0x80, "QR set");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR; saw {:?}", &buf[..n]);

    // Too short for a header, and a response packet (reflection): dropped.
    for pkt in [&[1u8, 2, 3][..], &[0x12, 0x34, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0][..]] {
        sock.send(pkt).unwrap();
        assert!(sock.recv(&mut buf).is_err(), "no answer to {pkt:?}");
    }

    // Pseudo-random junk and an oversized packet.
    let mut x: u32 = 0x1234_5678;
    for len in [12usize, 13, 17, 29, 64, 300, 512, 1500, 4000, 65000] {
        let pkt: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x & 0xff) as u8
            })
            .collect();
        let _ = sock.send(&pkt);
    }
    // Junk over TCP: a length prefix promising more than is sent, then close.
    if let Ok(mut t) = TcpStream::connect(dns.addr) {
        let _ = t.write_all(&[0x10, 0x00, 1, 2, 3]);
    }

    // Still serving.
    let out = dig(&dns, &["web.prod.svc.cluster.local", "A"]);
    assert_eq!(status(&out), "NOERROR", "the server answers after bad packets:\n{out}");
    let out = dig(&dns, &["+tcp", "web.prod.svc.cluster.local", "A"]);
    assert_eq!(status(&out), "NOERROR", "and over TCP:\n{out}");
}

#[test]
fn dns_serves_health_readiness_and_metrics() {
    let Some(_netns) = tests::ThreadNetns::enter("serves_healt") else { return };
    let dir = TempDir::new("http");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_upstream("127.0.0.86");
    let dns = start_dns(&dir, "127.0.0.85", &[up.addr], &[]);
    let _ = dig(&dns, &["web.prod.svc.cluster.local", "SRV"]);
    assert!(http_get(dns.metrics, "/healthz").unwrap().starts_with("HTTP/1.1 200"));
    assert!(http_get(dns.metrics, "/readyz").unwrap().starts_with("HTTP/1.1 200"));
    let m = http_get(dns.metrics, "/metrics").unwrap();
    for needle in ["sluice_dns_queries_total{type=\"SRV\",rcode=\"NOERROR\"} 1", "sluice_dns_synced 1", "sluice_dns_model_names"] {
        assert!(m.contains(needle), "metrics should contain {needle}:\n{m}");
    }
}

#[test]
fn dns_unreadable_kubeconfig_is_reported_clearly() {
    let Some(_netns) = tests::ThreadNetns::enter("unreadable_k") else { return };
    let dir = TempDir::new("kubecfg");
    let upstream = write_upstreams(&dir, &[]);
    let out = Command::new(tests::workspace_bin("sluice-dns"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "--listen", "127.0.0.87:5399", "--upstream"])
        .arg(&upstream)
        .output()
        .unwrap();
    assert!(!out.status.success(), "without a usable API source the server exits non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kubeconfig"), "the error names the file:\n{err}");
}

/// glibc's resolver (`getent hosts`, what most programs in a pod use) with
/// the resolv.conf a kubelet writes: the cluster's search path, ndots:5.
/// `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over
/// /etc/resolv.conf for the command it runs.
#[test]
fn dns_glibc_resolves_short_and_qualified_names_through_the_search_path() {
    let Some(netns) = tests::ThreadNetns::enter("getent") else { return };
    struct EtcNetns(PathBuf);
    impl Drop for EtcNetns {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            // Only when empty: another namespace may have its own files there.
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
    let etc = EtcNetns(PathBuf::from(format!("/etc/netns/{}", netns.name())));
    std::fs::create_dir_all(&etc.0).unwrap();
    std::fs::write(
        etc.0.join("resolv.conf"),
        "nameserver 127.0.0.53\nsearch prod.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
    )
    .unwrap();
    let dir = TempDir::new("getent");
    write(
        &dir.manifests(),
        "web.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\n\
         spec: {clusterIP: 198.19.0.40, ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: other}\n\
         spec: {clusterIP: 198.19.0.41, ports: [{name: pg, port: 5432}]}\n",
    );
    let up = start_upstream("127.0.0.88");
    let _dns = start_dns_at(&dir, "127.0.0.53:53".parse().unwrap(), &[up.addr], &[]);
    let getent = |name: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", netns.name(), "getent", "hosts", name])
            .output()
            .expect("running getent");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for (name, want) in [
        ("web", "198.19.0.40"),
        ("web.prod", "198.19.0.40"),
        ("web.prod.svc.cluster.local", "198.19.0.40"),
        ("db.other", "198.19.0.41"),
    ] {
        let got = getent(name);
        assert!(got.starts_with(want), "getent hosts {name}: expected {want}, got {got:?}");
    }
    // db lives in another namespace: the search path must not find it (the
    // bare name then goes upstream, where the fake upstream answers anything).
    let db = getent("db");
    assert!(!db.starts_with("198.19.0.41"), "getent hosts db must not find other/db through prod's search path: {db:?}");
}

/// The API source: sluice-dns follows the test API server (the real kube-rs
/// list/watch path) through an ordinary kubeconfig, and a Service created
/// afterwards shows up in the answers.
#[test]
fn dns_follows_the_api_server_through_a_kubeconfig() {
    let Some(_netns) = tests::ThreadNetns::enter("kubeconfig") else { return };
    let dir = TempDir::new("kubeconfig");
    let api = tests::apiserver::ApiServer::start();
    let kubeconfig = dir.0.join("kubeconfig.yaml");
    api.write_kubeconfig(&kubeconfig);
    api.apply_yaml_str(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\n\
         spec: {clusterIP: 198.19.0.50, ports: [{name: http, port: 80}]}\n",
    );
    let up = start_upstream("127.0.0.91");
    let addr = SocketAddr::new("127.0.0.90".parse().unwrap(), free_port("127.0.0.90"));
    let upstream = write_upstreams(&dir, &[up.addr]);
    let log = dir.0.join("sluice-dns.log");
    let bin = tests::workspace_bin("sluice-dns");
    let child = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--listen", &addr.to_string()])
        .arg("--upstream")
        .arg(&upstream)
        .args(["--upstream-timeout-ms", "500", "--threads", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let dns = Dns { child, addr, metrics: addr, log };
    let wait_for = |name: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = answers(&dig(&dns, &[name, "A"]));
            if got.iter().any(|a| a.ends_with(want)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never answered {want} (last {got:?}); log:\n{}",
                std::fs::read_to_string(&dns.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("web.prod.svc.cluster.local", "198.19.0.50");
    api.apply_yaml_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: prod}\n\
         spec: {clusterIP: 198.19.0.51, ports: [{name: http, port: 80}]}\n",
    );
    wait_for("api.prod.svc.cluster.local", "198.19.0.51");
}

// ---------------------------------------------------------------- issue 20: hostile input, bounded memory

/// A headless Service `many` in `prod` with `n` endpoints (and a named port, so SRV records exist).
fn many_endpoints_with_port(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: many, namespace: prod}\nspec: {clusterIP: None, ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: many-a, namespace: prod, labels: {kubernetes.io/service-name: many}}\naddressType: IPv4\n\
         ports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for i in 0..n {
        s.push_str(&format!("- {{addresses: [198.18.{}.{}]}}\n", 1 + i / 250, i % 250 + 1));
    }
    s
}

/// A raw query for `name`/`qtype` (no EDNS, RD set).
fn raw_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[test]
fn dns_truncated_udp_answers_are_well_formed_messages_for_dig_and_the_parser() {
    let Some(_netns) = tests::ThreadNetns::enter("truncation") else { return };
    let dir = TempDir::new("wellformed");
    write(&dir.manifests(), "many.yaml", &many_endpoints_with_port(300));
    let up = start_upstream("127.0.0.93");
    let dns = start_dns(&dir, "127.0.0.92", &[up.addr], &[]);

    for (name, qtype) in [
        ("many.prod.svc.cluster.local", "SRV"),
        ("_http._tcp.many.prod.svc.cluster.local", "SRV"),
        ("many.prod.svc.cluster.local", "A"),
    ] {
        for edns in ["+noedns", "+bufsize=1232", "+bufsize=512"] {
            let out = dig(&dns, &["+ignore", edns, name, qtype]);
            assert!(!out.to_ascii_lowercase().contains("malformed"), "dig {edns} {name} {qtype} calls the answer malformed:\n{out}");
            assert!(flags(&out).contains("tc"), "dig {edns} {name} {qtype}: TC set:\n{out}");
            assert_eq!(status(&out), "NOERROR", "dig {edns} {name} {qtype}:\n{out}");
        }
    }
    // The bytes themselves: at most 512, and exactly the records the header counts.
    let sock = UdpSocket::bind("127.0.0.92:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.connect(dns.addr).unwrap();
    let mut buf = [0u8; 4096];
    for (i, qtype) in [33u16, 1].into_iter().enumerate() {
        sock.send(&raw_query(0x5150 + i as u16, "many.prod.svc.cluster.local.", qtype)).unwrap();
        let n = sock.recv(&mut buf).expect("an answer");
        assert!(n <= 512, "a client without EDNS gets at most 512 bytes, saw {n}");
        assert_eq!(buf[2] & 0x02, 0x02, "TC set");
        let walked = sluice_dns::wire::walk(&buf[..n]).unwrap_or_else(|e| panic!("type {qtype}: not a well-formed message: {e}"));
        assert!(!walked.rrs.is_empty(), "type {qtype}: the records that fit are kept");
    }
    // Over TCP the same question is answered whole.
    let out = dig(&dns, &["+tcp", "many.prod.svc.cluster.local", "A"]);
    assert_eq!(answers(&out).len(), 300, "TCP carries every record:\n{out}");
}

#[test]
fn dns_empty_non_terminals_answer_nodata_not_nxdomain() {
    let Some(_netns) = tests::ThreadNetns::enter("ent_nodata") else { return };
    let dir = TempDir::new("ent");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_upstream("127.0.0.95");
    let dns = start_dns(&dir, "127.0.0.94", &[up.addr], &[]);
    for name in ["dns.cluster.local", "svc.cluster.local", "cluster.local", "pod.cluster.local", "_tcp.nginx.prod.svc.cluster.local"] {
        let out = dig(&dns, &[name, "A"]);
        assert_eq!(status(&out), "NOERROR", "{name} exists (RFC 8020):\n{out}");
        assert!(answers(&out).is_empty(), "{name}: NODATA:\n{out}");
    }
    assert_eq!(status(&dig(&dns, &["nope.dns.cluster.local", "A"])), "NXDOMAIN");
}

#[test]
fn dns_forwarding_only_for_allowed_clients_and_any_answered_minimally() {
    let Some(netns) = tests::ThreadNetns::enter("open_resolv") else { return };
    // An outside address on lo: not loopback (127/8), not a pod or node of the cluster.
    let ok = Command::new("ip").args(["-n", netns.name(), "addr", "add", "203.0.113.5/32", "dev", "lo"]).status().unwrap();
    assert!(ok.success(), "adding 203.0.113.5 to lo");
    let dir = TempDir::new("acl");
    // A Node whose pod CIDR is allowed by the default `--allow-recursion cluster`.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [198.18.7.0/24]}\n\
                status: {addresses: [{type: InternalIP, address: 192.0.2.7}]}\n";
    write(&dir.manifests(), "cluster.yaml", &format!("{CLUSTER}---\n{node}"));
    let ok = Command::new("ip").args(["-n", netns.name(), "addr", "add", "198.18.7.9/32", "dev", "lo"]).status().unwrap();
    assert!(ok.success(), "adding 198.18.7.9 to lo");
    let up = start_upstream("127.0.0.97");
    // Listening on every address; each client asks the address it sends
    // from, so the reply's source (chosen by routing) is the one it asked.
    let mut dns = start_dns(&dir, "0.0.0.0", &[up.addr], &[]);
    let port = dns.addr.port();
    let mut from = |ip: &str, args: &[&str]| {
        dns.addr = SocketAddr::new(ip.parse().unwrap(), port);
        dig(&dns, &[&["-b", ip], args].concat())
    };

    let out = from("203.0.113.5", &["www.example.org", "A"]);
    assert_eq!(status(&out), "REFUSED", "an outside client gets no forwarding:\n{out}");
    assert!(!flags(&out).contains("ra"), "and no RA:\n{out}");
    let out = from("203.0.113.5", &["web.prod.svc.cluster.local", "A"]);
    assert_eq!(answers(&out), vec!["web.prod.svc.cluster.local. 5 IN A 198.19.0.10"], "cluster names answer everyone:\n{out}");
    let out = from("198.18.7.9", &["www.example.org", "A"]);
    assert_eq!(answers(&out), vec!["www.example.org. 300 IN A 192.0.2.1"], "a pod of a Node's podCIDR is forwarded:\n{out}");
    let out = from("127.0.0.96", &["www.example.org", "ANY"]);
    let any = answers(&out);
    assert!(any.len() == 1 && any[0].contains("HINFO \"RFC8482\""), "ANY is answered with one HINFO (RFC 8482):\n{out}");
    let out = from("127.0.0.96", &["web.prod.svc.cluster.local", "ANY"]);
    assert_eq!(answers(&out).len(), 1, "ANY in the zone: one RRset:\n{out}");
    let metrics = http_get(dns.metrics, "/metrics").unwrap();
    assert!(metrics.contains("sluice_dns_recursion_refused_total 1"), "{metrics}");
}

#[test]
fn dns_tcp_connections_beyond_the_limit_are_closed() {
    let Some(_netns) = tests::ThreadNetns::enter("tcp_limit") else { return };
    let dir = TempDir::new("tcplimit");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_upstream("127.0.0.99");
    let dns = start_dns(&dir, "127.0.0.98", &[up.addr], &["--max-tcp-connections", "4"]);
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(dns.addr).unwrap()).collect();
    // Wait until the server took the four (it accepts asynchronously).
    thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(dns.addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 1];
    let closed = matches!(extra.read(&mut b), Ok(0)) || matches!(extra.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed, "a fifth connection is closed at once");
    let metrics = http_get(dns.metrics, "/metrics").unwrap();
    assert!(metrics.contains("sluice_dns_tcp_rejected_total 1"), "{metrics}");
    drop(idle);
    thread::sleep(Duration::from_millis(300));
    let out = dig(&dns, &["+tcp", "web.prod.svc.cluster.local", "A"]);
    assert_eq!(status(&out), "NOERROR", "slots free again once connections close:\n{out}");
}

/// An upstream for the memory test: `big*` names are TC over UDP and about
/// 64 KB (4,000 A records) over TCP; TCP served by 8 threads.
struct HugeUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tcp_answers: Arc<AtomicUsize>,
}

impl Drop for HugeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn huge_answer(q: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let end = qname_end(q)? + 4;
    if q.len() < end {
        return None;
    }
    let count: u16 = if tcp { 4000 } else { 0 };
    let mut r = Vec::with_capacity(12 + end + usize::from(count) * 16);
    r.extend_from_slice(&q[..2]);
    r.push(0x81 | if tcp { 0 } else { 0x02 });
    r.push(0x80);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&count.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..end]);
    for i in 0..count {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        r.extend_from_slice(&300u32.to_be_bytes());
        r.extend_from_slice(&[0, 4, 192, 0, 2 + (i / 250) as u8 % 8, (i % 250 + 1) as u8]);
    }
    Some(r)
}

fn start_huge_upstream(ip: &str) -> HugeUpstream {
    let (udp, tcp) = bound_pair(ip);
    let addr = udp.local_addr().unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tcp_answers = Arc::new(AtomicUsize::new(0));
    {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, src)) = udp.recv_from(&mut buf) {
                    if let Some(r) = huge_answer(&buf[..n], false) {
                        let _ = udp.send_to(&r, src);
                    }
                }
            }
        });
    }
    for _ in 0..8 {
        let (tcp, stop, answered) = (tcp.try_clone().unwrap(), stop.clone(), tcp_answers.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = tcp.accept() else {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if s.read_exact(&mut q).is_ok() {
                    if let Some(r) = huge_answer(&q, true) {
                        let mut framed = u16::try_from(r.len()).unwrap().to_be_bytes().to_vec();
                        framed.extend_from_slice(&r);
                        if s.write_all(&framed).is_ok() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    HugeUpstream { addr, stop, tcp_answers }
}

/// The memory limit of the shipped Deployment (`dns/deploy/deployment.yaml`), in bytes.
fn deployment_memory_limit() -> u64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dns/deploy/deployment.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let limit = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("limits: {memory: "))
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("no `limits: {{memory: ...}}` in {}", path.display()));
    let mib: u64 = limit.strip_suffix("Mi").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("limit {limit:?} is not in Mi"));
    mib << 20
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// Issue 20 item 9: a flood of forwarded questions whose upstream answers are
/// about 64 KB each (every one a new cache entry), TCP clients asking for a
/// headless Service of 10,000 endpoints, and the peak RSS stays under the
/// Deployment's memory limit while cluster names keep answering.
#[test]
fn dns_memory_stays_under_the_deployment_limit_under_floods_and_huge_answers() {
    let Some(_netns) = tests::ThreadNetns::enter("memory_bound") else { return };
    let dir = TempDir::new("memory");
    write(&dir.manifests(), "cluster.yaml", CLUSTER);
    let up = start_huge_upstream("127.0.0.101");
    let dns = start_dns(&dir, "127.0.0.100", &[up.addr], &[]);
    // The 10,000 endpoints are in the model before the flood starts (written
    // after startup: reading them takes a debug build longer than readiness waits).
    write(&dir.manifests(), "many.yaml", &many_endpoints_with_port(10_000));
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers(&dig(&dns, &["+tcp", "198-18-40-250.many.prod.svc.cluster.local", "A"])).is_empty() {
        assert!(Instant::now() < deadline, "the 10,000-endpoint Service never showed up");
        thread::sleep(Duration::from_millis(100));
    }
    let limit = deployment_memory_limit();
    let pid = dns.child.id();

    // TCP clients asking for the whole headless Service (answers cut at 64 KB).
    let stop = Arc::new(AtomicBool::new(false));
    let tcp_ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, tcp_ok, addr) = (stop.clone(), tcp_ok.clone(), dns.addr);
        clients.push(thread::spawn(move || {
            for i in 0..200u16 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = TcpStream::connect(addr) else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let q = raw_query(i, "many.prod.svc.cluster.local.", if i % 2 == 0 { 1 } else { 33 });
                let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
                framed.extend_from_slice(&q);
                let mut len = [0u8; 2];
                if s.write_all(&framed).is_ok() && s.read_exact(&mut len).is_ok() {
                    let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut r).is_ok() && r[3] & 0x0f == 0 {
                        tcp_ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // The flood: 3,000 distinct names, each a ~64 KB upstream answer, sent
    // in waves of 300 over UDP.
    let sock = UdpSocket::bind("127.0.0.100:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    sock.connect(dns.addr).unwrap();
    let mut buf = [0u8; 2048];
    let mut answered = 0usize;
    for wave in 0..10u16 {
        for i in 0..300u16 {
            let _ = sock.send(&raw_query(wave * 300 + i, &format!("big{}.example.org.", wave * 300 + i), 1));
        }
        let wave_end = Instant::now() + Duration::from_secs(10);
        let mut got = 0;
        while got < 300 && Instant::now() < wave_end {
            if sock.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        answered += got;
        // Cluster names keep answering in the middle of the flood.
        let out = dig(&dns, &["+tries=3", "web.prod.svc.cluster.local", "A"]);
        assert_eq!(answers(&out), vec!["web.prod.svc.cluster.local. 5 IN A 198.19.0.10"], "cluster name during wave {wave}:\n{out}");
        let rss = peak_rss(pid);
        assert!(rss < limit, "after wave {wave}: peak RSS {} MiB reached the Deployment's limit of {} MiB", rss >> 20, limit >> 20);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let rss = peak_rss(pid);
    let metrics = http_get(dns.metrics, "/metrics").unwrap();
    let cache_bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_dns_cache_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("sluice_dns_cache_bytes");
    eprintln!(
        "peak RSS {} MiB (limit {} MiB); {answered} of 3000 flood answers; {} upstream TCP answers; {} TCP cluster answers; cache {} MiB",
        rss >> 20,
        limit >> 20,
        up.tcp_answers.load(Ordering::Relaxed),
        tcp_ok.load(Ordering::Relaxed),
        cache_bytes >> 20
    );
    assert!(rss < limit, "peak RSS {} MiB reached the Deployment's limit of {} MiB", rss >> 20, limit >> 20);
    assert!(up.tcp_answers.load(Ordering::Relaxed) > 500, "the flood must really have moved huge answers to be a test");
    assert!(cache_bytes <= 32 << 20, "the cache holds at most --cache-bytes (32 MiB default): {cache_bytes}");
    assert!(tcp_ok.load(Ordering::Relaxed) > 0, "TCP clients got the headless Service");
    let out = dig(&dns, &["web.prod.svc.cluster.local", "A"]);
    assert_eq!(status(&out), "NOERROR", "cluster names answer after the flood:\n{out}");
}
