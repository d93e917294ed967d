//! The packet programs run on crafted frames with `BPF_PROG_TEST_RUN`
//! (aya's `TestRun`): the external path's tc programs (`slc_tc_ingress`,
//! `slc_tc_egress`), its XDP fast path (`slc_xdp`) and the CNI host-routing
//! classifiers (`slc_from_pod`, `slc_to_pod`). Nothing is attached: each
//! test loads the embedded object, fills its maps (or its configuration
//! global), runs frames through a program and checks the verdict, every
//! rewritten byte that matters and both checksums.
//!
//! The programs ask the kernel FIB where a packet goes, so every test runs
//! in a network namespace of its own whose routes and neighbours it sets up
//! (veth pairs whose far ends stay there: nothing is ever sent), and loads the proxy object with
//! its pinned maps in a private bpffs: the answers never depend on the
//! machine's own routes, and no two tests share a map.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use proxy_common::{
    external, maps as names, Backend4, CtEntry4, CtKey4, ExternalConfig, ServiceKey4, ServiceValue,
    MaglevKey, SourceRangeKey4, BACKEND_ACTIVE, LB_MAGLEV, CT_FORWARD, CT_F_SNAT, CT_REPLY, EXT_F_PEER_REDIRECT, PROTO_TCP,
    PROTO_UDP, SCOPE_EXTERNAL, SOURCE_RANGE_ALLOW, SOURCE_RANGE_DENY, XDP_STAT_FORWARDED, XDP_STAT_PASSED,
};
use tests::ThreadNetns;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// TC_ACT_UNSPEC (-1) as the test run reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

// The lab every test builds in its own namespace: `ext` is the node's
// external interface / underlay (192.0.2.1/24; 192.0.2.2 is the router
// toward the outside and host-gw peer, 192.0.2.3 a VXLAN peer node), `pods`
// leads to local pods and backends (198.18.0.1/24), `veth` stands for a
// pod's host-side veth, `vx` for the VXLAN device.
const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const PEER_NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const OTHER_LOCAL_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
const HOSTGW_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);
const VXLAN_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 9);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);

const EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const PODS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const LOCAL_POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x05];
const VETH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const VX_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x01];
/// The VTEP MAC of PEER_NODE: 0e:5c and the node's address.
const PEER_VTEP_MAC: [u8; 6] = [0x0e, 0x5c, 192, 0, 2, 3];
const VXLAN_PORT: u16 = 4789;
const VNI: u32 = 42;

fn require_root() {
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the BPF_PROG_TEST_RUN tests need root (bpf(2), a network namespace, a bpffs mount): run `cargo xtask test` or the test as root"
    );
}

/// A network namespace the test thread lives in, with the lab's devices,
/// addresses, routes and permanent neighbours.
struct Lab {
    _ns: ThreadNetns,
    ext: u32,
    veth: u32,
    vx: u32,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root();
        let ns = ThreadNetns::enter(tag).expect("root was checked above");
        let name = ns.name().to_owned();
        let ip = |args: &str| {
            let args: Vec<&str> = args.split_whitespace().collect();
            if let Err(e) = tests::ip_in(&name, &args) {
                panic!("setting up the lab: {e}");
            }
        };
        tests::sysctls(&name, &[("net.ipv4.ip_forward", "1")]).unwrap_or_else(|e| panic!("ip_forward in {name}: {e}"));
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        for (dev, m) in [("ext", EXT_MAC), ("pods", PODS_MAC), ("veth", VETH_MAC), ("vx", VX_MAC)] {
            // A veth whose peer stays in the namespace: up, with carrier,
            // and nothing listens behind it.
            ip(&format!("link add {dev} address {} type veth peer name {dev}-p", mac(m)));
            ip(&format!("link set {dev}-p up"));
            ip(&format!("link set {dev} up"));
        }
        ip("addr add 192.0.2.1/24 dev ext");
        ip("addr add 198.18.0.1/24 dev pods");
        ip(&format!("neigh add {ROUTER} lladdr {} dev ext nud permanent", mac(ROUTER_MAC)));
        ip(&format!("neigh add {PEER_NODE} lladdr {} dev ext nud permanent", mac(PEER_NODE_MAC)));
        ip(&format!("neigh add {LOCAL_POD} lladdr {} dev pods nud permanent", mac(LOCAL_POD_MAC)));
        ip(&format!("route add 203.0.113.0/24 via {ROUTER} dev ext"));
        ip(&format!("route add 198.18.1.0/24 via {ROUTER} dev ext"));
        ip("route add 198.18.2.0/24 via 198.18.2.0 dev vx onlink");
        ip(&format!("neigh add 198.18.2.0 lladdr {} dev vx nud permanent", mac(PEER_VTEP_MAC)));
        // /sys/class/net shows the namespace that mounted /sys: ask ip.
        let ifindex = |dev: &str| -> u32 {
            let out = tests::ip_in(&name, &["-o", "link", "show", dev]).unwrap_or_else(|e| panic!("{e}"));
            out.split(':').next().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| panic!("ifindex of {dev} in {out:?}"))
        };
        Lab { ext: ifindex("ext"), veth: ifindex("veth"), vx: ifindex("vx"), _ns: ns }
    }
}

/// A bpffs mounted for one test at /tmp/slc-bpftr-<pid>-<n>, unmounted and
/// removed on drop: the proxy object's maps are pinned, and must neither
/// meet a running agent's maps nor another test's.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new() -> Bpffs {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("slc-bpftr-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL in a temp path");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        let me = Bpffs(dir);
        assert_eq!(rc, 0, "mount -t bpf {}: {}", me.0.display(), std::io::Error::last_os_error());
        me
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid path; a lazy unmount of our own mount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Frames

fn addr(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

#[derive(Clone, Copy)]
enum L4<'a> {
    Tcp { sport: u16, dport: u16, seq: u32, ack: u32, flags: u8 },
    Udp { sport: u16, dport: u16, payload: &'a [u8], checksum: bool },
}

/// An Ethernet + IPv4 (no options, DF) + TCP/UDP frame with correct checksums.
fn frame(dmac: [u8; 6], smac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, l4: L4<'_>) -> Vec<u8> {
    let (proto, mut seg) = match l4 {
        L4::Tcp { sport, dport, seq, ack, flags } => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            t[8..12].copy_from_slice(&ack.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = flags;
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (PROTO_TCP, t)
        }
        L4::Udp { sport, dport, payload, .. } => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
            u.extend_from_slice(payload);
            (PROTO_UDP, u)
        }
    };
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = 20 + seg.len() as u16;
    let mut ip = [0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, ttl, proto, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let with_l4_sum = !matches!(l4, L4::Udp { checksum: false, .. });
    if with_l4_sum {
        let c = checksum(&seg, pseudo(src, dst, proto, seg.len()));
        let c = if proto == PROTO_UDP && c == 0 { 0xffff } else { c };
        let at = if proto == PROTO_TCP { 16 } else { 6 };
        seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    f.extend_from_slice(&ip);
    f.extend_from_slice(&seg);
    f
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    sum16(&src.octets()) + sum16(&dst.octets()) + u32::from(proto) + len as u32
}

/// The Internet checksum of `b` plus a partial sum; 0 over data that carries a valid one.
fn checksum(b: &[u8], partial: u32) -> u16 {
    let mut s = sum16(b) + partial;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A parsed IPv4 frame, for assertions.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    dmac: [u8; 6],
    smac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    proto: u8,
    sport: u16,
    dport: u16,
}

fn seen(f: &[u8]) -> Seen {
    assert!(f.len() >= 14 + 20 + 8, "frame too short: {f:02x?}");
    assert_eq!(&f[12..14], &[0x08, 0x00], "not IPv4: {f:02x?}");
    let ip = &f[14..];
    Seen {
        dmac: f[0..6].try_into().expect("6 bytes"),
        smac: f[6..12].try_into().expect("6 bytes"),
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        ttl: ip[8],
        proto: ip[9],
        sport: u16::from_be_bytes([ip[20], ip[21]]),
        dport: u16::from_be_bytes([ip[22], ip[23]]),
    }
}

/// Asserts the IPv4 header checksum and the TCP/UDP checksum of a frame
/// (a UDP checksum of 0, "none", must have stayed 0 when `udp_none`).
fn assert_checksums(f: &[u8], udp_none: bool) {
    let ip = &f[14..34];
    assert_eq!(checksum(ip, 0), 0, "IPv4 header checksum wrong in {f:02x?}");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(f.len(), 14 + total, "frame length and IPv4 total length disagree: {f:02x?}");
    let seg = &f[34..];
    let (src, dst) = (Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    match ip[9] {
        PROTO_UDP if udp_none => assert_eq!(&seg[6..8], &[0, 0], "a UDP checksum of 0 must stay 0: {f:02x?}"),
        PROTO_UDP | PROTO_TCP => {
            assert_eq!(checksum(seg, pseudo(src, dst, ip[9], seg.len())), 0, "L4 checksum wrong in {f:02x?}");
        }
        1 => assert_eq!(checksum(seg, 0), 0, "ICMP checksum wrong in {f:02x?}"),
        p => panic!("unexpected protocol {p}"),
    }
}

fn run_tc(prog: &SchedClassifier, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    // struct __sk_buff up to `ifindex` (offset 40): the device the packet came in on.
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ctx_in: Some(&ctx), ..Default::default() })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of a tc program: {e}"));
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn run_xdp(prog: &Xdp, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    // struct xdp_md: data 0, data_end = len, data_meta 0, ingress_ifindex, rx queue 0.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ctx_in: Some(&ctx), ..Default::default() })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of the XDP program: {e}"));
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

// ---------------------------------------------------------------------------
// The proxy's external path

const NODEPORT: u16 = 30080;
const REMOTE_NODEPORT: u16 = 30081;
const EMPTY_NODEPORT: u16 = 30082;
const RANGED_NODEPORT: u16 = 30083;
const BACKEND_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40000;

/// The proxy object loaded with its maps in a private bpffs, its tc and XDP
/// programs loaded (verified) but attached nowhere.
struct Proxy {
    bpf: Ebpf,
    _fs: Bpffs,
}

impl Proxy {
    fn load() -> Proxy {
        let fs = Bpffs::new();
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(fs.path());
        for name in names::ALL.iter().chain(&[external::CONNTRACK4, external::MAGLEV4]) {
            loader.map_max_entries(name, 1024);
        }
        let mut bpf = loader.load(proxy_user::ebpf::object()).unwrap_or_else(|e| panic!("loading the proxy object: {e}"));
        for name in [external::PROG_TC_INGRESS, external::PROG_TC_EGRESS] {
            let p: &mut SchedClassifier = bpf.program_mut(name).expect(name).try_into().expect("a classifier");
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        let p: &mut Xdp = bpf.program_mut(external::PROG_XDP).expect("slc_xdp").try_into().expect("an XDP program");
        p.load().unwrap_or_else(|e| panic!("loading slc_xdp: {e}"));
        let mut me = Proxy { bpf, _fs: fs };
        me.config(0);
        me
    }

    fn config(&mut self, flags: u32) {
        let cfg = ExternalConfig { tcp_timeout: 300, udp_timeout: 60, enabled: 1, flags, ..Default::default() };
        self.set_config(cfg);
    }

    fn set_config(&mut self, cfg: ExternalConfig) {
        let mut a: Array<_, ExternalConfig> = self.bpf.map_mut(external::CONFIG).expect("config map").try_into().expect("an array");
        a.set(0, cfg, 0).expect("writing the config");
    }

    /// An external frontend `addr:port/proto` with revnat id `revnat` and
    /// these backends (id, address, port), as the agent writes it.
    fn frontend(&mut self, addr_: Ipv4Addr, port: u16, proto: u8, revnat: u32, backends: &[(u32, Ipv4Addr, u16)]) {
        {
            let mut be: HashMap<_, u32, Backend4> = self.bpf.map_mut(names::BACKENDS4).expect("backends").try_into().expect("a hash");
            for &(id, a, p) in backends {
                be.insert(id, Backend4 { addr: addr(a), port: p.to_be(), proto, state: BACKEND_ACTIVE }, 0).expect("backend");
            }
        }
        let mut svc: HashMap<_, ServiceKey4, ServiceValue> =
            self.bpf.map_mut(names::SERVICES4).expect("services").try_into().expect("a hash");
        let key = |slot: u16| ServiceKey4 { addr: addr(addr_), port: port.to_be(), proto, scope: SCOPE_EXTERNAL, slot, _pad: 0 };
        let fe = ServiceValue { count: backends.len() as u32, revnat_id: revnat, ..Default::default() };
        svc.insert(key(0), fe, 0).expect("frontend");
        for (i, &(id, _, _)) in backends.iter().enumerate() {
            svc.insert(key(i as u16 + 1), ServiceValue { backend_id: id, ..Default::default() }, 0).expect("slot");
        }
    }

    fn conntrack(&self, key: CtKey4) -> Option<CtEntry4> {
        let ct: HashMap<_, CtKey4, CtEntry4> = self.bpf.map(external::CONNTRACK4).expect("conntrack").try_into().expect("a hash");
        ct.get(&key, 0).ok()
    }

    fn ingress(&self, f: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        run_tc(self.bpf.program(external::PROG_TC_INGRESS).expect("ingress").try_into().expect("classifier"), f, ifindex)
    }

    fn egress(&self, f: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        run_tc(self.bpf.program(external::PROG_TC_EGRESS).expect("egress").try_into().expect("classifier"), f, ifindex)
    }

    fn xdp(&self, f: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        run_xdp(self.bpf.program(external::PROG_XDP).expect("xdp").try_into().expect("xdp"), f, ifindex)
    }

    fn xdp_stat(&self, slot: u32) -> u64 {
        let s: PerCpuArray<_, u64> = self.bpf.map(external::XDP_STATS).expect("xdp stats").try_into().expect("a per-CPU array");
        s.get(&slot, 0).expect("stat slot").iter().sum()
    }
}

fn ct_key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8, dir: u8) -> CtKey4 {
    CtKey4 { saddr: addr(src), daddr: addr(dst), sport: sport.to_be(), dport: dport.to_be(), proto, dir, _pad: 0 }
}

fn syn(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    frame(EXT_MAC, ROUTER_MAC, CLIENT, dst, 64, L4::Tcp { sport: CLIENT_PORT, dport, seq: 1000, ack: 0, flags: TCP_SYN })
}

#[test]
fn tc_ingress_dnats_a_nodeport_syn_to_a_local_backend_and_egress_translates_the_reply() {
    let lab = Lab::new("bpftr-np");
    let mut px = Proxy::load();
    px.frontend(NODE, NODEPORT, PROTO_TCP, 7, &[(1, LOCAL_POD, BACKEND_PORT)]);

    let (verdict, out) = px.ingress(&syn(NODE, NODEPORT), lab.ext);
    // A local backend is handed up the node's stack (not redirected) so the
    // node's conntrack sees the flow and a masquerade rule leaves its replies alone.
    assert_eq!(verdict, TC_ACT_OK, "a SYN to a NodePort with a local backend goes up the node's stack");
    let got = seen(&out);
    let want = Seen {
        dmac: EXT_MAC,
        smac: ROUTER_MAC,
        src: CLIENT,
        dst: LOCAL_POD,
        ttl: 64,
        proto: PROTO_TCP,
        sport: CLIENT_PORT,
        dport: BACKEND_PORT,
    };
    assert_eq!(got, want, "DNAT to the local backend keeps the client's address (no SNAT)");
    assert_checksums(&out, false);

    let fwd = px.conntrack(ct_key(CLIENT, NODE, CLIENT_PORT, NODEPORT, PROTO_TCP, CT_FORWARD)).expect("a forward conntrack entry");
    assert_eq!(
        (fwd.nat_saddr, fwd.nat_daddr, fwd.nat_sport, fwd.nat_dport, fwd.backend_id, fwd.flags, fwd.revnat_id),
        (addr(CLIENT), addr(LOCAL_POD), CLIENT_PORT.to_be(), BACKEND_PORT.to_be(), 1, 0, 7),
        "forward entry"
    );
    let rev = px.conntrack(ct_key(LOCAL_POD, CLIENT, BACKEND_PORT, CLIENT_PORT, PROTO_TCP, CT_REPLY)).expect("a reply conntrack entry");
    assert_eq!(
        (rev.nat_saddr, rev.nat_daddr, rev.nat_sport, rev.nat_dport),
        (addr(NODE), addr(CLIENT), NODEPORT.to_be(), CLIENT_PORT.to_be()),
        "reply entry translates back to the NodePort"
    );

    // The backend's SYN-ACK, routed out of `ext` by the kernel: tc egress
    // shows the client the NodePort again.
    let synack = frame(ROUTER_MAC, EXT_MAC, LOCAL_POD, CLIENT, 63, L4::Tcp {
        sport: BACKEND_PORT,
        dport: CLIENT_PORT,
        seq: 5000,
        ack: 1001,
        flags: TCP_SYN | TCP_ACK,
    });
    let (verdict, out) = px.egress(&synack, lab.ext);
    assert_eq!(verdict, TC_ACT_OK, "egress translates and lets the reply go");
    let got = seen(&out);
    assert_eq!((got.src, got.sport, got.dst, got.dport), (NODE, NODEPORT, CLIENT, CLIENT_PORT), "reverse NAT of the reply");
    assert_eq!((got.dmac, got.smac), (ROUTER_MAC, EXT_MAC), "egress leaves the MACs to the stack");
    assert_checksums(&out, false);

    // A packet of no tracked flow leaves egress untouched.
    let other = frame(ROUTER_MAC, EXT_MAC, LOCAL_POD, CLIENT, 63, L4::Tcp { sport: 9999, dport: CLIENT_PORT, seq: 1, ack: 1, flags: TCP_ACK });
    assert_eq!(px.egress(&other, lab.ext), (TC_ACT_OK, other.clone()), "untracked egress packet unchanged");
}

#[test]
fn tc_ingress_dnats_and_snats_a_nodeport_flow_to_a_backend_on_another_node() {
    let lab = Lab::new("bpftr-snat");
    let mut px = Proxy::load();
    px.frontend(NODE, REMOTE_NODEPORT, PROTO_UDP, 8, &[(2, HOSTGW_POD, BACKEND_PORT)]);

    let dgram = frame(EXT_MAC, ROUTER_MAC, CLIENT, NODE, 64, L4::Udp {
        sport: CLIENT_PORT,
        dport: REMOTE_NODEPORT,
        payload: b"ping",
        checksum: true,
    });
    let (verdict, out) = px.ingress(&dgram, lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out of the interface it came in on");
    let got = seen(&out);
    let want = Seen {
        dmac: ROUTER_MAC,
        smac: EXT_MAC,
        src: NODE,
        dst: HOSTGW_POD,
        ttl: 64,
        proto: PROTO_UDP,
        sport: CLIENT_PORT,
        dport: BACKEND_PORT,
    };
    assert_eq!(got, want, "DNAT to the backend and SNAT to the node's address (the client's port was free)");
    assert_checksums(&out, false);
    assert_eq!(&out[42..], b"ping", "payload unchanged");
    let fwd = px.conntrack(ct_key(CLIENT, NODE, CLIENT_PORT, REMOTE_NODEPORT, PROTO_UDP, CT_FORWARD)).expect("forward entry");
    assert_eq!(fwd.flags, CT_F_SNAT, "forward entry marked SNAT");

    // The backend's answer comes back in through `ext`: translated to the
    // frontend and sent back to the client.
    let reply = frame(EXT_MAC, ROUTER_MAC, HOSTGW_POD, NODE, 63, L4::Udp {
        sport: BACKEND_PORT,
        dport: CLIENT_PORT,
        payload: b"pong",
        checksum: true,
    });
    let (verdict, out) = px.ingress(&reply, lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT, "the reply is forwarded to the client");
    let got = seen(&out);
    assert_eq!(
        (got.src, got.sport, got.dst, got.dport, got.dmac, got.smac),
        (NODE, REMOTE_NODEPORT, CLIENT, CLIENT_PORT, ROUTER_MAC, EXT_MAC),
        "reverse NAT of a SNATed flow's reply"
    );
    assert_checksums(&out, false);

    // A UDP datagram without a checksum keeps none.
    let bare = frame(EXT_MAC, ROUTER_MAC, CLIENT, NODE, 64, L4::Udp {
        sport: CLIENT_PORT + 1,
        dport: REMOTE_NODEPORT,
        payload: b"x",
        checksum: false,
    });
    let (verdict, out) = px.ingress(&bare, lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(seen(&out).dst, HOSTGW_POD);
    assert_checksums(&out, true);
}

#[test]
fn tc_ingress_rejects_new_flows_to_a_frontend_without_backends() {
    let lab = Lab::new("bpftr-rej");
    let mut px = Proxy::load();
    px.frontend(NODE, EMPTY_NODEPORT, PROTO_TCP, 9, &[]);
    px.frontend(NODE, EMPTY_NODEPORT, PROTO_UDP, 10, &[]);

    // TCP: a RST|ACK from the frontend, acknowledging the SYN.
    let (verdict, out) = px.ingress(&syn(NODE, EMPTY_NODEPORT), lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT, "the RST goes back out of the interface the SYN came in on");
    assert_eq!(out.len(), 54, "a bare RST: {out:02x?}");
    let got = seen(&out);
    assert_eq!(
        (got.dmac, got.smac, got.src, got.sport, got.dst, got.dport, got.proto),
        (ROUTER_MAC, EXT_MAC, NODE, EMPTY_NODEPORT, CLIENT, CLIENT_PORT, PROTO_TCP),
        "RST from the frontend to the client"
    );
    let tcp = &out[34..];
    assert_eq!(tcp[13], TCP_RST | TCP_ACK, "flags RST|ACK");
    assert_eq!(u32::from_be_bytes(tcp[4..8].try_into().expect("4")), 0, "seq 0");
    assert_eq!(u32::from_be_bytes(tcp[8..12].try_into().expect("4")), 1001, "acks the SYN (seq + 1)");
    assert_checksums(&out, false);

    // A segment with ACK set gets a RST with its ack number as sequence.
    let ack = frame(EXT_MAC, ROUTER_MAC, CLIENT, NODE, 64, L4::Tcp {
        sport: CLIENT_PORT,
        dport: EMPTY_NODEPORT,
        seq: 1001,
        ack: 777,
        flags: TCP_ACK | TCP_FIN,
    });
    let (verdict, out) = px.ingress(&ack, lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((out[34 + 13], u32::from_be_bytes(out[38..42].try_into().expect("4"))), (TCP_RST, 777), "RST, seq = their ack");
    assert_checksums(&out, false);

    // UDP: ICMP port unreachable quoting the datagram's IP header and 8 bytes.
    let dgram = frame(EXT_MAC, ROUTER_MAC, CLIENT, NODE, 64, L4::Udp {
        sport: CLIENT_PORT,
        dport: EMPTY_NODEPORT,
        payload: b"hello",
        checksum: true,
    });
    let (verdict, out) = px.ingress(&dgram, lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 14 + 20 + 8 + 28, "ICMP error carrying 28 bytes: {out:02x?}");
    assert_eq!((&out[0..6], &out[6..12]), (&ROUTER_MAC[..], &EXT_MAC[..]), "MACs swapped");
    assert_eq!(out[14 + 9], 1, "ICMP");
    assert_eq!((&out[26..30], &out[30..34]), (&NODE.octets()[..], &CLIENT.octets()[..]), "from the node to the client");
    assert_eq!((out[34], out[35]), (3, 3), "destination unreachable / port unreachable");
    assert_eq!(&out[42..70], &dgram[14..42], "quotes the original IP header and UDP header");
    assert_checksums(&out, false);
}

#[test]
fn tc_ingress_rejects_unserved_ports_of_a_load_balancer_ip_and_ignores_them_on_node_addresses() {
    let lab = Lab::new("bpftr-extip");
    let mut px = Proxy::load();
    px.frontend(LB_IP, 80, PROTO_TCP, 11, &[(3, LOCAL_POD, BACKEND_PORT)]);
    {
        let mut ips: HashMap<_, u32, u32> = px.bpf.map_mut(external::EXTERNAL_IPS4).expect("external IPs").try_into().expect("a hash");
        ips.insert(addr(LB_IP), 1, 0).expect("LB IP");
    }
    let (verdict, out) = px.ingress(&syn(LB_IP, 80), lab.ext);
    assert_eq!((verdict, seen(&out).dst, seen(&out).dport), (TC_ACT_OK, LOCAL_POD, BACKEND_PORT), "the served port (a local backend: up the stack)");
    let (verdict, out) = px.ingress(&syn(LB_IP, 81), lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT, "another port of the LB IP is refused");
    assert_eq!(out[34 + 13], TCP_RST | TCP_ACK, "with a RST");
    let to_node = syn(NODE, 22);
    assert_eq!(px.ingress(&to_node, lab.ext), (TC_ACT_OK, to_node.clone()), "a node address leaves unknown ports to the stack");
}

#[test]
fn tc_ingress_drops_sources_outside_load_balancer_source_ranges() {
    let lab = Lab::new("bpftr-srcr");
    let mut px = Proxy::load();
    px.frontend(NODE, RANGED_NODEPORT, PROTO_TCP, 12, &[(4, LOCAL_POD, BACKEND_PORT)]);
    {
        let mut t: LpmTrie<_, SourceRangeKey4, u32> =
            px.bpf.map_mut(external::SOURCE_RANGES4).expect("source ranges").try_into().expect("an LPM trie");
        t.insert(&Key::new(32, SourceRangeKey4 { revnat_id: 12, addr: 0 }), SOURCE_RANGE_DENY, 0).expect("marker");
        let allowed = SourceRangeKey4 { revnat_id: 12, addr: addr(Ipv4Addr::new(203, 0, 113, 0)) };
        t.insert(&Key::new(32 + 28, allowed), SOURCE_RANGE_ALLOW, 0).expect("range");
    }
    let (verdict, out) = px.ingress(&syn(NODE, RANGED_NODEPORT), lab.ext);
    assert_eq!((verdict, seen(&out).dst), (TC_ACT_OK, LOCAL_POD), "203.0.113.7 is inside 203.0.113.0/28");
    let outsider = frame(EXT_MAC, ROUTER_MAC, Ipv4Addr::new(203, 0, 113, 77), NODE, 64, L4::Tcp {
        sport: CLIENT_PORT,
        dport: RANGED_NODEPORT,
        seq: 1,
        ack: 0,
        flags: TCP_SYN,
    });
    assert_eq!(px.ingress(&outsider, lab.ext).0, TC_ACT_SHOT, "203.0.113.77 is outside the range: dropped");
}

#[test]
fn tc_ingress_takes_new_flows_to_the_backend_the_maglev_table_names() {
    let lab = Lab::new("bpftr-maglev");
    let mut px = Proxy::load();
    let other = Ipv4Addr::new(198, 18, 0, 6);
    px.frontend(NODE, NODEPORT, PROTO_TCP, 20, &[(1, LOCAL_POD, BACKEND_PORT), (5, other, BACKEND_PORT)]);
    const SIZE: u32 = 7;
    px.set_config(ExternalConfig {
        lb_algorithm: LB_MAGLEV,
        maglev_size: SIZE,
        tcp_timeout: 300,
        udp_timeout: 60,
        enabled: 1,
        ..Default::default()
    });
    {
        let mut table: HashMap<_, MaglevKey, u32> = px.bpf.map_mut(external::MAGLEV4).expect("maglev").try_into().expect("a hash");
        for index in 0..SIZE {
            table.insert(MaglevKey { revnat_id: 20, index }, 5, 0).expect("maglev slot");
        }
    }
    // A random pick would choose backend 1 half of the time; the table says 5.
    for sport in 0..8u16 {
        let f = frame(EXT_MAC, ROUTER_MAC, CLIENT, NODE, 64, L4::Tcp {
            sport: CLIENT_PORT + sport,
            dport: NODEPORT,
            seq: 1,
            ack: 0,
            flags: TCP_SYN,
        });
        let (verdict, out) = px.ingress(&f, lab.ext);
        assert_eq!(verdict, TC_ACT_OK, "a local backend goes up the node's stack");
        assert_eq!(seen(&out).dst, other, "client port {}: the Maglev table's backend", CLIENT_PORT + sport);
        assert_checksums(&out, false);
    }
}

#[test]
fn tc_programs_leave_packets_alone_while_disabled_and_non_ip_frames_always() {
    let lab = Lab::new("bpftr-off");
    let mut px = Proxy::load();
    px.frontend(NODE, NODEPORT, PROTO_TCP, 7, &[(1, LOCAL_POD, BACKEND_PORT)]);
    px.set_config(ExternalConfig::default());
    let f = syn(NODE, NODEPORT);
    assert_eq!(px.ingress(&f, lab.ext), (TC_ACT_OK, f.clone()), "config not written yet: untouched");
    assert_eq!(px.conntrack(ct_key(CLIENT, NODE, CLIENT_PORT, NODEPORT, PROTO_TCP, CT_FORWARD)), None, "nothing tracked");
    px.config(0);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&ROUTER_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(px.ingress(&arp, lab.ext), (TC_ACT_OK, arp.clone()), "ARP untouched");
    assert_eq!(px.egress(&arp, lab.ext), (TC_ACT_OK, arp.clone()), "ARP untouched on egress");
}

#[test]
fn xdp_forwards_tracked_flows_tc_admitted_and_passes_everything_else() {
    let lab = Lab::new("bpftr-xdp");
    let mut px = Proxy::load();
    px.frontend(NODE, REMOTE_NODEPORT, PROTO_TCP, 8, &[(2, HOSTGW_POD, BACKEND_PORT)]);
    px.frontend(NODE, NODEPORT, PROTO_TCP, 7, &[(1, LOCAL_POD, BACKEND_PORT)]);

    // A SYN is tc's to admit: XDP passes it untouched.
    let first = syn(NODE, REMOTE_NODEPORT);
    assert_eq!(px.xdp(&first, lab.ext), (XDP_PASS, first.clone()), "a SYN passes to tc");
    assert_eq!((px.xdp_stat(XDP_STAT_PASSED), px.xdp_stat(XDP_STAT_FORWARDED)), (1, 0), "counted as passed");
    let (verdict, _) = px.ingress(&first, lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT, "tc admits the flow");

    // The flow's next segment: forwarded by XDP with tc's translation.
    let ack = frame(EXT_MAC, ROUTER_MAC, CLIENT, NODE, 64, L4::Tcp {
        sport: CLIENT_PORT,
        dport: REMOTE_NODEPORT,
        seq: 1001,
        ack: 5001,
        flags: TCP_ACK,
    });
    let (verdict, out) = px.xdp(&ack, lab.ext);
    assert_eq!(verdict, XDP_TX, "out of the interface it came in on");
    let got = seen(&out);
    let want = Seen {
        dmac: ROUTER_MAC,
        smac: EXT_MAC,
        src: NODE,
        dst: HOSTGW_POD,
        ttl: 64,
        proto: PROTO_TCP,
        sport: CLIENT_PORT,
        dport: BACKEND_PORT,
    };
    assert_eq!(got, want, "DNAT + SNAT as tc did");
    assert_checksums(&out, false);

    // The backend's reply: back to the client as the frontend.
    let reply = frame(EXT_MAC, ROUTER_MAC, HOSTGW_POD, NODE, 64, L4::Tcp {
        sport: BACKEND_PORT,
        dport: CLIENT_PORT,
        seq: 5001,
        ack: 1001,
        flags: TCP_ACK,
    });
    let (verdict, out) = px.xdp(&reply, lab.ext);
    assert_eq!(verdict, XDP_TX);
    let got = seen(&out);
    assert_eq!((got.src, got.sport, got.dst, got.dport), (NODE, REMOTE_NODEPORT, CLIENT, CLIENT_PORT), "reverse NAT");
    assert_checksums(&out, false);
    assert_eq!(px.xdp_stat(XDP_STAT_FORWARDED), 2, "two packets forwarded");

    // With veth interfaces the program redirects instead of XDP_TX.
    px.config(EXT_F_PEER_REDIRECT);
    assert_eq!(px.xdp(&ack, lab.ext).0, XDP_REDIRECT, "EXT_F_PEER_REDIRECT: bpf_redirect to the same device");
    px.config(0);

    // A flow to a local backend leaves through another interface: tc's job.
    let (verdict, _) = px.ingress(&syn(NODE, NODEPORT), lab.ext);
    assert_eq!(verdict, TC_ACT_OK, "a local backend goes up the node's stack");
    let local = frame(EXT_MAC, ROUTER_MAC, CLIENT, NODE, 64, L4::Tcp {
        sport: CLIENT_PORT,
        dport: NODEPORT,
        seq: 1001,
        ack: 1,
        flags: TCP_ACK,
    });
    assert_eq!(px.xdp(&local, lab.ext), (XDP_PASS, local.clone()), "local backend: passed untouched");

    // No conntrack entry: passed untouched.
    let stranger = frame(EXT_MAC, ROUTER_MAC, CLIENT, NODE, 64, L4::Tcp {
        sport: CLIENT_PORT + 5,
        dport: REMOTE_NODEPORT,
        seq: 1,
        ack: 1,
        flags: TCP_ACK,
    });
    assert_eq!(px.xdp(&stranger, lab.ext), (XDP_PASS, stranger.clone()), "untracked: passed untouched");
}

// ---------------------------------------------------------------------------
// CNI host routing

/// The host-routing programs loaded with this lab's configuration, through
/// the daemon's own conversion (`hostrouting::config`).
struct HostRouting(Ebpf);

impl HostRouting {
    fn load(lab: &Lab) -> HostRouting {
        let params = sluice_cni::hostrouting::Params {
            cluster: vec!["198.18.0.0/16".parse().expect("cidr")],
            local: vec!["198.18.0.0/24".parse().expect("cidr")],
            node_ip: NODE,
            underlay_if: lab.ext,
            vxlan: Some((VXLAN_PORT, VNI, lab.vx)),
        };
        let cfg = sluice_cni::hostrouting::config(&params);
        let mut bpf = EbpfLoader::new()
            .override_global(cni_common::CONFIG, &cfg, true)
            .load(sluice_cni::hostrouting::object())
            .unwrap_or_else(|e| panic!("loading the host-routing object: {e}"));
        for name in [cni_common::PROG_FROM_POD, cni_common::PROG_TO_POD] {
            let p: &mut SchedClassifier = bpf.program_mut(name).expect(name).try_into().expect("a classifier");
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        HostRouting(bpf)
    }

    fn run(&self, prog: &str, f: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        run_tc(self.0.program(prog).expect(prog).try_into().expect("classifier"), f, ifindex)
    }
}

fn pod_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    frame(VETH_MAC, [0x02, 0, 0, 0, 0x02, 0x02], src, dst, ttl, L4::Tcp { sport: 33000, dport: 80, seq: 1, ack: 0, flags: TCP_SYN })
}

#[test]
fn from_pod_forwards_to_local_and_host_gw_pods_with_ttl_and_macs_as_forwarding_would() {
    let lab = Lab::new("bpftr-fpod");
    let hr = HostRouting::load(&lab);

    let (verdict, out) = hr.run(cni_common::PROG_FROM_POD, &pod_packet(OTHER_LOCAL_POD, LOCAL_POD, 64), lab.veth);
    assert_eq!(verdict, TC_ACT_REDIRECT, "to a pod on this node: bpf_redirect_peer");
    let got = seen(&out);
    assert_eq!((got.dmac, got.smac, got.ttl, got.src, got.dst), (LOCAL_POD_MAC, PODS_MAC, 63, OTHER_LOCAL_POD, LOCAL_POD));
    assert_checksums(&out, false);

    let (verdict, out) = hr.run(cni_common::PROG_FROM_POD, &pod_packet(OTHER_LOCAL_POD, HOSTGW_POD, 64), lab.veth);
    assert_eq!(verdict, TC_ACT_REDIRECT, "to a pod on a host-gw peer: out of the underlay");
    let got = seen(&out);
    assert_eq!((got.dmac, got.smac, got.ttl, got.dst), (ROUTER_MAC, EXT_MAC, 63, HOSTGW_POD));
    assert_checksums(&out, false);

    let outside = pod_packet(OTHER_LOCAL_POD, CLIENT, 64);
    assert_eq!(hr.run(cni_common::PROG_FROM_POD, &outside, lab.veth), (TC_ACT_UNSPEC, outside.clone()), "leaving the cluster: the stack's");
    let expiring = pod_packet(OTHER_LOCAL_POD, LOCAL_POD, 1);
    assert_eq!(hr.run(cni_common::PROG_FROM_POD, &expiring, lab.veth), (TC_ACT_UNSPEC, expiring.clone()), "TTL 1: the stack answers");
    let spoofed = pod_packet(HOSTGW_POD, LOCAL_POD, 64);
    assert_eq!(hr.run(cni_common::PROG_FROM_POD, &spoofed, lab.veth), (TC_ACT_UNSPEC, spoofed.clone()), "source not a local pod");
}

#[test]
fn from_pod_encapsulates_for_a_vxlan_peer_as_the_device_would() {
    let lab = Lab::new("bpftr-encap");
    let hr = HostRouting::load(&lab);
    let inner = pod_packet(OTHER_LOCAL_POD, VXLAN_POD, 64);
    let (verdict, out) = hr.run(cni_common::PROG_FROM_POD, &inner, lab.veth);
    assert_eq!(verdict, TC_ACT_REDIRECT, "out of the underlay, encapsulated");
    assert_eq!(out.len(), inner.len() + 50, "outer IPv4 + UDP + VXLAN + Ethernet: {out:02x?}");
    let outer = seen(&out);
    assert_eq!(
        (outer.dmac, outer.smac, outer.src, outer.dst, outer.ttl, outer.proto, outer.dport),
        (PEER_NODE_MAC, EXT_MAC, NODE, PEER_NODE, 64, PROTO_UDP, VXLAN_PORT),
        "outer headers to the peer's VTEP"
    );
    assert!((32768..61000).contains(&outer.sport), "source port from the ephemeral range: {}", outer.sport);
    assert_eq!(checksum(&out[14..34], 0), 0, "outer IPv4 checksum");
    assert_eq!(&out[14 + 6..14 + 8], &[0, 0], "no DF on the outer header");
    assert_eq!(u16::from_be_bytes([out[38], out[39]]), (inner.len() + 16) as u16, "UDP length: UDP + VXLAN headers + the inner frame");
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum 0");
    assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 0, VNI as u8, 0], "VXLAN flags and VNI");
    let got = seen(&out[50..]);
    assert_eq!((got.dmac, got.smac, got.ttl, got.src, got.dst), (PEER_VTEP_MAC, VX_MAC, 63, OTHER_LOCAL_POD, VXLAN_POD), "inner frame");
    assert_checksums(&out[50..], false);
}

#[test]
fn to_pod_decapsulates_vxlan_and_forwards_plain_packets_to_local_pods() {
    let lab = Lab::new("bpftr-tpod");
    let hr = HostRouting::load(&lab);

    // What a peer's device sends: VXLAN to our node address.
    let inner = frame(VX_MAC, PEER_VTEP_MAC, VXLAN_POD, LOCAL_POD, 64, L4::Tcp { sport: 33000, dport: 80, seq: 1, ack: 0, flags: TCP_SYN });
    let mut vx = Vec::new();
    vx.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);
    vx.extend_from_slice(&inner);
    let outer = frame(EXT_MAC, PEER_NODE_MAC, PEER_NODE, NODE, 64, L4::Udp { sport: 50000, dport: VXLAN_PORT, payload: &vx, checksum: false });
    let (verdict, out) = hr.run(cni_common::PROG_TO_POD, &outer, lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT, "decapsulated and handed to the pod");
    assert_eq!(out.len(), inner.len(), "outer headers removed: {out:02x?}");
    let got = seen(&out);
    assert_eq!((got.dmac, got.smac, got.ttl, got.src, got.dst), (LOCAL_POD_MAC, PODS_MAC, 63, VXLAN_POD, LOCAL_POD));
    assert_checksums(&out, false);

    // Another VNI is the device's business.
    let mut other_vni = outer.clone();
    other_vni[42 + 6] = 43;
    let (verdict, _) = hr.run(cni_common::PROG_TO_POD, &other_vni, lab.ext);
    assert_eq!(verdict, TC_ACT_UNSPEC, "another VNI is left to the VXLAN device");

    // host-gw: a plain packet from a peer's pod.
    let plain = frame(EXT_MAC, ROUTER_MAC, HOSTGW_POD, LOCAL_POD, 64, L4::Tcp { sport: 33000, dport: 80, seq: 1, ack: 0, flags: TCP_SYN });
    let (verdict, out) = hr.run(cni_common::PROG_TO_POD, &plain, lab.ext);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let got = seen(&out);
    assert_eq!((got.dmac, got.smac, got.ttl), (LOCAL_POD_MAC, PODS_MAC, 63));
    assert_checksums(&out, false);

    let from_outside = frame(EXT_MAC, ROUTER_MAC, CLIENT, LOCAL_POD, 64, L4::Tcp { sport: 1, dport: 80, seq: 1, ack: 0, flags: TCP_SYN });
    assert_eq!(hr.run(cni_common::PROG_TO_POD, &from_outside, lab.ext), (TC_ACT_UNSPEC, from_outside.clone()), "source outside the cluster: the stack's");
}
