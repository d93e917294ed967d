//! The Services a benchmark programs, and the same Services rendered three
//! ways: Kubernetes manifests for sluice-proxy's standalone mode, the ruleset
//! kube-proxy's iptables mode writes with `iptables-restore`, and the ruleset
//! kube-proxy's nftables mode writes with `nft -f`, ClusterIPs and NodePorts
//! (`externalTrafficPolicy: Cluster`). Pure text generation, so it is unit
//! tested without the kernel.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Namespace of every benchmark Service.
pub const NAMESPACE: &str = "bench";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PortSpec {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
    pub target: u16,
    /// Makes the Service `type: NodePort` with this port on every node address.
    pub node_port: Option<u16>,
}

/// One ClusterIP (or NodePort, when a port has `node_port`) Service with its
/// ready endpoints (one EndpointSlice).
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<PortSpec>,
    pub endpoints: Vec<Ipv4Addr>,
}

impl ServiceSpec {
    pub fn tcp(name: &str, vip: Ipv4Addr, port: u16, target: u16, endpoints: Vec<Ipv4Addr>) -> Self {
        ServiceSpec {
            name: name.to_string(),
            vip,
            ports: vec![PortSpec {
                name: "tcp".into(),
                proto: Proto::Tcp,
                port,
                target,
                node_port: None,
            }],
            endpoints,
        }
    }

    /// The same Service as `type: NodePort`: its ports get the NodePorts
    /// `node_port`, `node_port + 1`, ... in order.
    #[must_use]
    pub fn with_node_port(mut self, node_port: u16) -> Self {
        for (k, p) in self.ports.iter_mut().enumerate() {
            p.node_port = Some(node_port + u16::try_from(k).expect("few ports"));
        }
        self
    }

    pub fn is_node_port(&self) -> bool {
        self.ports.iter().any(|p| p.node_port.is_some())
    }

    /// Number of frontends sluice-proxy programs for it without an external
    /// datapath (one per port).
    pub fn frontends(&self) -> usize {
        self.frontends_on(0)
    }

    /// Number of frontends sluice-proxy programs for it when it serves
    /// external traffic on `node_ips` node addresses: one per port, plus an
    /// external-scope and a cluster-scope frontend per NodePort and address.
    pub fn frontends_on(&self, node_ips: usize) -> usize {
        self.ports
            .iter()
            .map(|p| 1 + if p.node_port.is_some() { 2 * node_ips } else { 0 })
            .sum()
    }
}

/// VIP of the i-th filler Service: 198.19.0.1 .. 198.19.39.250 for i < 10,000.
pub fn filler_vip(i: usize) -> Ipv4Addr {
    let hi = u8::try_from(i / 250).expect("at most 64,000 filler services");
    let lo = u8::try_from(i % 250 + 1).expect("< 251");
    Ipv4Addr::new(198, 19, hi, lo)
}

/// Endpoint `j` of filler Service `i`: distinct (address, target port) pairs
/// for 100,000 endpoints inside 198.18.128.0/17, never a real pod (nothing
/// routes there, and no connection is ever made to them).
pub fn filler_endpoint(i: usize, j: usize) -> (Ipv4Addr, u16) {
    let e = (i * 10 + j) % 30_000;
    let port = 20_000 + u16::try_from(i / 3_000).expect("small");
    let e = u32::try_from(e).expect("small");
    let base = u32::from(Ipv4Addr::new(198, 18, 128, 1));
    (Ipv4Addr::from(base + e), port)
}

/// `count` filler Services of 10 endpoints each, named `svc-00000`...
pub fn fillers(count: usize) -> Vec<ServiceSpec> {
    (0..count)
        .map(|i| {
            let (_, port) = filler_endpoint(i, 0);
            let endpoints = (0..10).map(|j| filler_endpoint(i, j).0).collect();
            ServiceSpec::tcp(&format!("svc-{i:05}"), filler_vip(i), 80, port, endpoints)
        })
        .collect()
}

/// `total` Services with `measured` among them, in the middle of the list
/// (kube-proxy's iptables mode walks KUBE-SERVICES in its map order, so the
/// expected position of any one Service is the middle).
pub fn with_fillers(measured: &ServiceSpec, total: usize) -> Vec<ServiceSpec> {
    let mut all = fillers(total.saturating_sub(1));
    all.insert(all.len() / 2, measured.clone());
    all
}

// ---------------------------------------------------------------- manifests

/// One YAML file: the Service and its EndpointSlice (flow style, small).
pub fn manifest(svc: &ServiceSpec) -> String {
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: {NAMESPACE}}}\nspec: {{{ty}clusterIP: {vip}, ports: [",
        n = svc.name,
        ty = if svc.is_node_port() { "type: NodePort, " } else { "" },
        vip = svc.vip
    );
    for (k, p) in svc.ports.iter().enumerate() {
        if k > 0 {
            s.push_str(", ");
        }
        let _ = write!(
            s,
            "{{name: {}, protocol: {}, port: {}, targetPort: {}",
            p.name,
            p.proto.upper(),
            p.port,
            p.target
        );
        if let Some(np) = p.node_port {
            let _ = write!(s, ", nodePort: {np}");
        }
        s.push('}');
    }
    let _ = write!(
        s,
        "]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {n}-x1, namespace: {NAMESPACE}, labels: {{kubernetes.io/service-name: {n}}}}}\naddressType: IPv4\nports: [",
        n = svc.name
    );
    for (k, p) in svc.ports.iter().enumerate() {
        if k > 0 {
            s.push_str(", ");
        }
        let _ = write!(
            s,
            "{{name: {}, protocol: {}, port: {}}}",
            p.name,
            p.proto.upper(),
            p.target
        );
    }
    s.push_str("]\nendpoints: [");
    for (k, e) in svc.endpoints.iter().enumerate() {
        if k > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{{addresses: [{e}], conditions: {{ready: true}}}}");
    }
    s.push_str("]\n");
    s
}

/// Filler Services per manifest file. The standalone source rescans the
/// whole directory on every change (and, when this was written, did so in
/// time quadratic in the number of files: 10,000 one-Service files made one
/// change take over a minute), so the fillers come 100 to a file; the
/// measured Services keep a file each.
pub const PER_FILE: usize = 100;

/// The manifest files for `services`: (file name, contents). Fillers
/// (`svc-NNNNN`) are grouped `PER_FILE` to a file, other Services get one each.
pub fn manifest_files(services: &[ServiceSpec]) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    let mut chunks: std::collections::BTreeMap<usize, String> = std::collections::BTreeMap::new();
    for s in services {
        match s.name.strip_prefix("svc-").and_then(|n| n.parse::<usize>().ok()) {
            Some(i) => {
                let text = chunks.entry(i / PER_FILE).or_default();
                if !text.is_empty() {
                    text.push_str("---\n");
                }
                text.push_str(&manifest(s));
            }
            None => files.push((format!("{}.yaml", s.name), manifest(s))),
        }
    }
    files.extend(chunks.into_iter().map(|(c, t)| (format!("fill-{c:04}.yaml"), t)));
    files
}

/// The file holding filler Service `i`.
pub fn filler_file(i: usize) -> String {
    format!("fill-{:04}.yaml", i / PER_FILE)
}

// ---------------------------------------------------------------- shared naming

/// kube-proxy names chains after a hash of "namespace/name:port" and protocol
/// (base32 of SHA-256, 16 characters). Any stable 16-character hash gives
/// rulesets of the same shape and size; FNV-1a is enough here.
fn chain_hash(parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut h2 = h ^ 0x9e37_79b9_7f4a_7c15;
    (0..16)
        .map(|k| {
            let v = if k < 8 { &mut h } else { &mut h2 };
            let c = ALPHABET[usize::try_from(*v & 31).expect("< 32")] as char;
            *v = v.rotate_right(5).wrapping_mul(0x0100_0000_01b3);
            c
        })
        .collect()
}

fn svc_port_name(svc: &ServiceSpec, p: &PortSpec) -> String {
    format!("{NAMESPACE}/{}:{}", svc.name, p.name)
}

// ---------------------------------------------------------------- iptables

/// The builtin-chain jumps kube-proxy's iptables mode installs once at start
/// (with `iptables -I`), as an `iptables-restore --noflush` input.
pub fn iptables_base() -> String {
    "*filter
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
COMMIT
"
    .to_string()
}

/// Removes every rule and user chain (an `iptables-restore` input without --noflush).
pub fn iptables_empty() -> String {
    "*filter\nCOMMIT\n*nat\nCOMMIT\n".to_string()
}

/// What kube-proxy's iptables proxier writes with `iptables-restore --noflush`
/// on a full sync: every KUBE-* chain of the filter and nat tables, the
/// per-Service KUBE-SVC chain choosing an endpoint with `statistic --mode
/// random` and one KUBE-SEP chain per endpoint doing the DNAT. A NodePort
/// (`externalTrafficPolicy: Cluster`) adds a KUBE-NODEPORTS rule jumping to
/// the port's KUBE-EXT chain, which marks the packet for masquerade (so the
/// backend's reply comes back through this node) and continues in KUBE-SVC.
pub fn iptables_ruleset(services: &[ServiceSpec], cluster_cidr: &str) -> String {
    let endpoints: usize = services.iter().map(|s| s.endpoints.len() * s.ports.len()).sum();
    let mut chains = String::with_capacity(64 * endpoints + 4096);
    let mut rules = String::with_capacity(400 * endpoints + 4096);
    let mut kube_services = String::with_capacity(200 * services.len());
    let mut kube_nodeports = String::new();

    chains.push_str(
        "*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
",
    );
    let _ = write!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n"
    );
    for svc in services {
        for p in &svc.ports {
            let spn = svc_port_name(svc, p);
            let proto = p.proto.lower();
            let hash = chain_hash(&[&spn, proto]);
            let svc_chain = format!("KUBE-SVC-{hash}");
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            if let Some(np) = p.node_port {
                let ext_chain = format!("KUBE-EXT-{hash}");
                let _ = writeln!(chains, ":{ext_chain} - [0:0]");
                let _ = writeln!(
                    kube_nodeports,
                    "-A KUBE-NODEPORTS -m comment --comment {spn} -m {proto} -p {proto} --dport {np} -j {ext_chain}"
                );
                let _ = writeln!(
                    rules,
                    "-A {ext_chain} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ\n\
                     -A {ext_chain} -j {svc_chain}"
                );
            }
            let _ = writeln!(
                kube_services,
                "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {svc_chain}",
                svc.vip, p.port
            );
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} ! -s {cluster_cidr} -j KUBE-MARK-MASQ",
                svc.vip, p.port
            );
            let n = svc.endpoints.len();
            let mut sep_rules = String::new();
            for (k, ep) in svc.endpoints.iter().enumerate() {
                let dest = format!("{ep}:{}", p.target);
                let sep = format!("KUBE-SEP-{}", chain_hash(&[&spn, proto, &dest]));
                let _ = writeln!(chains, ":{sep} - [0:0]");
                let remaining = n - k;
                if remaining > 1 {
                    #[expect(clippy::cast_precision_loss, reason = "endpoint counts are small")]
                    let probability = 1.0 / remaining as f64;
                    let _ = writeln!(
                        rules,
                        "-A {svc_chain} -m comment --comment \"{spn} -> {dest}\" -m statistic --mode random --probability {probability:.10} -j {sep}"
                    );
                } else {
                    let _ = writeln!(
                        rules,
                        "-A {svc_chain} -m comment --comment \"{spn} -> {dest}\" -j {sep}"
                    );
                }
                let _ = writeln!(
                    sep_rules,
                    "-A {sep} -m comment --comment {spn} -s {ep}/32 -j KUBE-MARK-MASQ\n\
                     -A {sep} -m comment --comment {spn} -m {proto} -p {proto} -j DNAT --to-destination {dest}"
                );
            }
            rules.push_str(&sep_rules);
        }
    }
    kube_services.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    let mut out = chains;
    out.push_str(&kube_services);
    out.push_str(&kube_nodeports);
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

// ---------------------------------------------------------------- nftables

const NFT_TABLE: &str = "ip kube-proxy";

fn nft_service_chain(svc: &ServiceSpec, p: &PortSpec) -> String {
    let proto = p.proto.lower();
    let h = chain_hash(&[&svc_port_name(svc, p), proto]);
    format!("service-{}-{NAMESPACE}/{}/{proto}/{}", &h[..8], svc.name, p.name)
}

fn nft_external_chain(svc: &ServiceSpec, p: &PortSpec) -> String {
    let proto = p.proto.lower();
    let h = chain_hash(&[&svc_port_name(svc, p), proto]);
    format!("external-{}-{NAMESPACE}/{}/{proto}/{}", &h[..8], svc.name, p.name)
}

fn nft_endpoint_chain(svc: &ServiceSpec, p: &PortSpec, ep: Ipv4Addr) -> String {
    let proto = p.proto.lower();
    let dest = format!("{ep}:{}", p.target);
    let h = chain_hash(&[&svc_port_name(svc, p), proto, &dest]);
    format!(
        "endpoint-{}-{NAMESPACE}/{}/{proto}/{}__{ep}/{}",
        &h[..8],
        svc.name,
        p.name,
        p.target
    )
}

/// Deletes kube-proxy's table (an `nft -f` input; "destroy" does not fail when absent).
pub fn nft_empty() -> String {
    format!("destroy table {NFT_TABLE}\n")
}

/// The transaction kube-proxy's nftables proxier sends (`nft -f`) on its first
/// sync: table `ip kube-proxy`, base chains, the `service-ips` verdict map
/// keyed by (VIP, protocol, port), one service chain per Service port choosing
/// an endpoint with `numgen random mod N vmap`, one endpoint chain per
/// endpoint doing the DNAT. A NodePort (`externalTrafficPolicy: Cluster`) is
/// an element of the `service-nodeports` verdict map (protocol, port) going
/// to the port's external chain, which jumps to `mark-for-masquerade` (the
/// `masquerading` chain in nat-postrouting then SNATs it, so the reply comes
/// back through this node) and continues in the service chain.
pub fn nft_ruleset(services: &[ServiceSpec], cluster_cidr: &str) -> String {
    let mut out = nft_base(services);
    nft_services(&mut out, services, cluster_cidr);
    out
}

/// The same end state as [`nft_ruleset`] in several transactions of at most
/// `per` Services each (the first also creates the table). Not what
/// kube-proxy sends, but much faster to load at 10,000 Services: this
/// kernel binds each anonymous set (one per service chain's `numgen` vmap)
/// by walking the whole pending transaction, so one transaction costs
/// quadratic time (minutes at 10,000 Services; the control-plane
/// measurement still loads the single transaction).
pub fn nft_ruleset_batches(services: &[ServiceSpec], cluster_cidr: &str, per: usize) -> Vec<String> {
    services
        .chunks(per.max(1))
        .enumerate()
        .map(|(k, chunk)| {
            let mut out = if k == 0 { nft_base(chunk) } else { String::new() };
            nft_services(&mut out, chunk, cluster_cidr);
            out
        })
        .collect()
}

/// The table, base chains, sets and maps of kube-proxy's ruleset.
fn nft_base(services: &[ServiceSpec]) -> String {
    let endpoints: usize = services.iter().map(|s| s.endpoints.len() * s.ports.len()).sum();
    let mut out = String::with_capacity(350 * endpoints + 4096);
    let t = NFT_TABLE;
    let _ = write!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}
add chain {t} mark-for-masquerade
add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}
add chain {t} masquerading
add rule {t} masquerading mark and {MASQ_MARK} == 0 return
add rule {t} masquerading mark set mark xor {MASQ_MARK}
add rule {t} masquerading masquerade fully-random
add chain {t} services
add chain {t} service-endpoints-check
add chain {t} firewall-check
add chain {t} filter-prerouting {{ type filter hook prerouting priority dstnat - 10 ; }}
add rule {t} filter-prerouting ct state new jump firewall-check
add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}
add rule {t} filter-forward ct state new jump service-endpoints-check
add chain {t} filter-input {{ type filter hook input priority -110 ; }}
add rule {t} filter-input ct state new jump service-endpoints-check
add chain {t} filter-output {{ type filter hook output priority -110 ; }}
add rule {t} filter-output ct state new jump service-endpoints-check
add rule {t} filter-output ct state new jump firewall-check
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add rule {t} nat-output jump services
add chain {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}
add rule {t} nat-postrouting jump masquerading
add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}
add rule {t} nat-prerouting jump services
add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}
add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}
add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}
add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
"
    );
    out
}

/// Every Service port's chains and map elements.
fn nft_services(out: &mut String, services: &[ServiceSpec], cluster_cidr: &str) {
    let t = NFT_TABLE;
    for svc in services {
        for p in &svc.ports {
            nft_service(out, svc, p, cluster_cidr);
            let _ = writeln!(out, "add element {t} cluster-ips {{ {} }}", svc.vip);
            let _ = writeln!(
                out,
                "add element {t} service-ips {{ {} . {} . {} : goto {} }}",
                svc.vip,
                p.proto.lower(),
                p.port,
                nft_service_chain(svc, p)
            );
            if let Some(np) = p.node_port {
                let ext = nft_external_chain(svc, p);
                let _ = write!(
                    out,
                    "add chain {t} {ext}\n\
                     add rule {t} {ext} jump mark-for-masquerade\n\
                     add rule {t} {ext} goto {}\n\
                     add element {t} service-nodeports {{ {} . {np} : goto {ext} }}\n",
                    nft_service_chain(svc, p),
                    p.proto.lower()
                );
            }
        }
    }
}

/// A service chain (flushed and rewritten) and its endpoint chains.
fn nft_service(out: &mut String, svc: &ServiceSpec, p: &PortSpec, cluster_cidr: &str) {
    for ep in &svc.endpoints {
        nft_endpoint(out, svc, p, *ep);
    }
    nft_service_only(out, svc, p, cluster_cidr, false);
}

fn nft_endpoint(out: &mut String, svc: &ServiceSpec, p: &PortSpec, ep: Ipv4Addr) {
    let t = NFT_TABLE;
    let proto = p.proto.lower();
    let chain = nft_endpoint_chain(svc, p, ep);
    // A new chain: kube-proxy adds it without a flush.
    let _ = write!(
        out,
        "add chain {t} {chain}\n\
         add rule {t} {chain} ip saddr {ep} jump mark-for-masquerade\n\
         add rule {t} {chain} meta l4proto {proto} dnat to {ep}:{}\n",
        p.target
    );
}

/// The service chain; `existing` chains are flushed and rewritten.
fn nft_service_only(out: &mut String, svc: &ServiceSpec, p: &PortSpec, cluster_cidr: &str, existing: bool) {
    let t = NFT_TABLE;
    let proto = p.proto.lower();
    let chain = nft_service_chain(svc, p);
    if existing {
        let _ = writeln!(out, "flush chain {t} {chain}");
    } else {
        let _ = writeln!(out, "add chain {t} {chain}");
    }
    let _ = write!(
        out,
        "\
         add rule {t} {chain} ip daddr {} {proto} dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade\n\
         add rule {t} {chain} numgen random mod {} vmap {{ ",
        svc.vip,
        p.port,
        svc.endpoints.len()
    );
    for (k, ep) in svc.endpoints.iter().enumerate() {
        if k > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{k} : goto {}", nft_endpoint_chain(svc, p, *ep));
    }
    out.push_str(" }\n");
}

/// The incremental transaction kube-proxy's nftables proxier sends when
/// endpoints of `before` are replaced (giving `after`): the new endpoint
/// chains, the service chain rewritten, the old endpoint chains deleted.
pub fn nft_endpoint_change(before: &ServiceSpec, after: &ServiceSpec, cluster_cidr: &str) -> String {
    let mut out = String::new();
    for p in &after.ports {
        for e in after.endpoints.iter().filter(|e| !before.endpoints.contains(e)) {
            nft_endpoint(&mut out, after, p, *e);
        }
        nft_service_only(&mut out, after, p, cluster_cidr, true);
        for e in before.endpoints.iter().filter(|e| !after.endpoints.contains(e)) {
            let _ = writeln!(out, "delete chain {NFT_TABLE} {}", nft_endpoint_chain(before, p, *e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServiceSpec {
        ServiceSpec::tcp(
            "web",
            Ipv4Addr::new(198, 19, 200, 1),
            80,
            8080,
            vec![Ipv4Addr::new(198, 18, 1, 10), Ipv4Addr::new(198, 18, 1, 11)],
        )
    }

    #[test]
    fn fillers_have_distinct_vips_and_endpoints() {
        let all = fillers(10_000);
        let vips: std::collections::HashSet<_> = all.iter().map(|s| s.vip).collect();
        assert_eq!(vips.len(), 10_000, "every filler needs its own VIP");
        let eps: std::collections::HashSet<_> = all
            .iter()
            .flat_map(|s| s.endpoints.iter().map(move |e| (*e, s.ports[0].target)))
            .collect();
        assert_eq!(eps.len(), 100_000, "every filler endpoint should be a distinct (addr, port)");
        assert!(all.iter().all(|s| s.vip.octets()[..2] == [198, 19]));
    }

    #[test]
    fn iptables_ruleset_has_kube_proxy_shape() {
        let r = iptables_ruleset(&[web()], "198.18.0.0/16");
        assert!(r.contains("-A KUBE-SERVICES -m comment --comment \"bench/web:tcp cluster IP\" -m tcp -p tcp -d 198.19.200.1/32 --dport 80 -j KUBE-SVC-"), "{r}");
        assert!(r.contains("--probability 0.5000000000 -j KUBE-SEP-"), "{r}");
        assert!(r.contains("-j DNAT --to-destination 198.18.1.11:8080"), "{r}");
        assert!(r.contains("! -s 198.18.0.0/16 -j KUBE-MARK-MASQ"), "{r}");
        assert!(r.contains("-j KUBE-NODEPORTS"), "{r}");
        assert_eq!(r.matches("COMMIT").count(), 2);
    }

    #[test]
    fn nft_batches_hold_the_same_commands_table_first() {
        let services = fillers(7);
        let one = nft_ruleset(&services, "198.18.0.0/16");
        let batches = nft_ruleset_batches(&services, "198.18.0.0/16", 3);
        assert_eq!(batches.len(), 3);
        assert!(batches[0].starts_with("add table"));
        assert!(!batches[1].contains("add table") && !batches[1].contains("add map"));
        assert_eq!(batches.concat(), one);
    }

    #[test]
    fn nft_ruleset_uses_verdict_map_and_numgen() {
        let r = nft_ruleset(&[web()], "198.18.0.0/16");
        assert!(r.contains("add element ip kube-proxy service-ips { 198.19.200.1 . tcp . 80 : goto service-"), "{r}");
        assert!(r.contains("numgen random mod 2 vmap { 0 : goto endpoint-"), "{r}");
        assert!(r.contains("meta l4proto tcp dnat to 198.18.1.10:8080"), "{r}");
    }

    #[test]
    fn nft_endpoint_change_adds_new_chain_rewrites_service_and_deletes_old() {
        let before = web();
        let mut after = web();
        after.endpoints[1] = Ipv4Addr::new(198, 18, 127, 1);
        let r = nft_endpoint_change(&before, &after, "198.18.0.0/16");
        assert!(r.contains("dnat to 198.18.127.1:8080"), "{r}");
        assert!(!r.contains("dnat to 198.18.1.10:8080"), "unchanged endpoint chain should not be rewritten: {r}");
        assert!(r.contains("numgen random mod 2"), "{r}");
        assert!(r.contains("delete chain ip kube-proxy endpoint-") && r.contains("198.18.1.11/8080"), "{r}");
    }

    fn web_node_port() -> ServiceSpec {
        web().with_node_port(30520)
    }

    #[test]
    fn iptables_node_port_goes_through_ext_chain_marked_for_masquerade() {
        let r = iptables_ruleset(&[web_node_port()], "198.18.0.0/16");
        let hash = chain_hash(&["bench/web:tcp", "tcp"]);
        let (ext, svc) = (format!("KUBE-EXT-{hash}"), format!("KUBE-SVC-{hash}"));
        let nat = &r[r.find("*nat").expect("nat table")..];
        for line in [
            format!(":{ext} - [0:0]"),
            format!("-A KUBE-NODEPORTS -m comment --comment bench/web:tcp -m tcp -p tcp --dport 30520 -j {ext}"),
            format!("-A {ext} -m comment --comment \"masquerade traffic for bench/web:tcp external destinations\" -j KUBE-MARK-MASQ"),
            format!("-A {ext} -j {svc}"),
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".to_string(),
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".to_string(),
        ] {
            assert!(nat.lines().any(|l| l == line), "nat table should have `{line}`:\n{r}");
        }
        // The mark comes before the jump to the service chain, which DNATs.
        let mark = nat.find(&format!("-A {ext} -m comment")).expect("mark rule");
        let jump = nat.find(&format!("-A {ext} -j {svc}")).expect("jump rule");
        assert!(mark < jump, "KUBE-EXT should mark before it jumps:\n{r}");
        assert!(r.contains("-j DNAT --to-destination 198.18.1.10:8080"), "{r}");
        assert!(!iptables_ruleset(&[web()], "198.18.0.0/16").contains("KUBE-EXT-"), "a ClusterIP Service has no KUBE-EXT chain");
    }

    #[test]
    fn nft_node_port_is_a_service_nodeports_element_to_an_external_chain() {
        let r = nft_ruleset(&[web_node_port()], "198.18.0.0/16");
        let h = &chain_hash(&["bench/web:tcp", "tcp"])[..8];
        let (ext, svc) = (format!("external-{h}-bench/web/tcp/tcp"), format!("service-{h}-bench/web/tcp/tcp"));
        for line in [
            format!("add chain ip kube-proxy {ext}"),
            format!("add rule ip kube-proxy {ext} jump mark-for-masquerade"),
            format!("add rule ip kube-proxy {ext} goto {svc}"),
            format!("add element ip kube-proxy service-nodeports {{ tcp . 30520 : goto {ext} }}"),
            "add rule ip kube-proxy nat-postrouting jump masquerading".to_string(),
            "add rule ip kube-proxy masquerading masquerade fully-random".to_string(),
        ] {
            assert!(r.lines().any(|l| l == line), "ruleset should have `{line}`:\n{r}");
        }
        assert!(r.contains("meta l4proto tcp dnat to 198.18.1.11:8080"), "{r}");
        assert!(!nft_ruleset(&[web()], "198.18.0.0/16").contains("external-"), "a ClusterIP Service has no external chain");
    }

    #[test]
    fn node_port_manifest_and_frontend_count() {
        let m = manifest(&web_node_port());
        assert!(m.contains("spec: {type: NodePort, clusterIP: 198.19.200.1, ports: [{name: tcp, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30520}]}"), "{m}");
        assert!(manifest(&web()).contains("spec: {clusterIP: 198.19.200.1, ports: [{name: tcp, protocol: TCP, port: 80, targetPort: 8080}]}"));
        assert_eq!(web_node_port().frontends(), 1);
        assert_eq!(web_node_port().frontends_on(1), 3, "ClusterIP + external and cluster scope at the one node address");
        assert_eq!(web().frontends_on(1), 1);
    }

    #[test]
    fn manifest_has_service_and_slice() {
        let m = manifest(&web());
        assert!(m.contains("clusterIP: 198.19.200.1"), "{m}");
        assert!(m.contains("kubernetes.io/service-name: web"), "{m}");
        assert!(m.contains("{addresses: [198.18.1.11], conditions: {ready: true}}"), "{m}");
    }
}

