//! What the running kernel offers, probed once at start (DESIGN.md,
//! "Kernels"): each daemon logs the table, shows it in `status`, exports it
//! as a metric, and picks its fallbacks from it.
//!
//! Every probe is a real, side-effect-free kernel call (a query, a load of a
//! two-instruction program, a map of one entry, BTF), never a version
//! comparison: distribution kernels backport and configure features away,
//! and Debian's `bpftool feature probe` is wrong on 6.12.

use std::fmt::Write as _;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::OnceLock;

use aya::programs::{ProgramType, SchedClassifier, TcAttachType};
use aya::sys::{is_helper_supported, is_program_supported, BpfHelper};
use tracing::info;

/// The kernel features Sluice's components depend on or fall back from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// Kernel BTF at /sys/kernel/btf/vmlinux.
    pub btf: bool,
    /// TCX (bpf_link based tc attach, 6.6). Without it: clsact + cls_bpf over netlink.
    pub tcx: bool,
    /// The `bpf_sock_destroy` kfunc (6.5, in BTF).
    pub sock_destroy_kfunc: bool,
    /// SOCK_DESTROY over sock_diag for UDP (CONFIG_INET_DIAG_DESTROY).
    pub sock_diag_destroy: bool,
    /// `bpf_set_retval` from cgroup programs (5.18): connect() to a Service
    /// without endpoints fails at once with ECONNREFUSED.
    pub set_retval: bool,
    /// BPF_MAP_UPDATE_BATCH and friends (5.6).
    pub batch_ops: bool,
    /// XDP programs load (native mode is per driver: checked at attach).
    pub xdp: bool,
}

/// How tc programs attach on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// bpf_link (6.6+): pinnable links, swapped in place on upgrade.
    Tcx,
    /// clsact qdisc + cls_bpf direct-action over netlink: filters at a
    /// fixed priority and handle, replaced in place on upgrade.
    Legacy,
}

impl std::fmt::Display for TcMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcx => "tcx",
            Self::Legacy => "legacy tc (clsact + cls_bpf via netlink)",
        })
    }
}

/// One row of the feature table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureRow {
    /// Short name, also the metric's label.
    pub name: &'static str,
    pub available: bool,
    /// What the feature is for and, when it is missing, what Sluice does instead.
    pub effect: &'static str,
}

impl KernelFeatures {
    /// Probes the kernel once per process; later calls return the same table.
    pub fn get() -> &'static Self {
        static PROBED: OnceLock<KernelFeatures> = OnceLock::new();
        PROBED.get_or_init(|| {
            let f = Self::probe();
            f.log();
            f
        })
    }

    /// Probes now (each call hits the kernel again).
    pub fn probe() -> Self {
        Self {
            release: release(),
            btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            tcx: probe_tcx(),
            sock_destroy_kfunc: probe_btf_func("bpf_sock_destroy"),
            sock_diag_destroy: probe_sock_diag_destroy().is_ok(),
            set_retval: is_helper_supported(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_set_retval).unwrap_or(false),
            batch_ops: probe_batch_ops().is_ok(),
            xdp: is_program_supported(ProgramType::Xdp).unwrap_or(false),
        }
    }

    /// TCX where the kernel has it. `SLUICE_TC_MODE=legacy` forces legacy
    /// tc (every kernel with TCX still has it): how the legacy path is
    /// tested on a TCX host.
    pub fn tc_mode(&self) -> TcMode {
        if self.tcx && !forced_legacy() {
            TcMode::Tcx
        } else {
            TcMode::Legacy
        }
    }

    /// The table, in a fixed order.
    pub fn rows(&self) -> Vec<FeatureRow> {
        let row = |name, available, yes, no| FeatureRow { name, available, effect: if available { yes } else { no } };
        vec![
            row("btf", self.btf, "kernel BTF present", "no kernel BTF: BTF-based features (kfuncs) unavailable"),
            row("tcx", self.tcx, "tc programs attach as TCX links", "fallback: legacy tc (clsact qdisc + cls_bpf direct-action via netlink)"),
            row(
                "sock_destroy_kfunc",
                self.sock_destroy_kfunc,
                "bpf_sock_destroy kfunc present",
                "kfunc absent (< 6.5): sockets are destroyed over sock_diag",
            ),
            row(
                "sock_diag_destroy",
                self.sock_diag_destroy,
                "SOCK_DESTROY over sock_diag destroys connected UDP sockets of removed backends",
                "refused: connected UDP sockets stay on removed backends (needs CONFIG_INET_DIAG_DESTROY)",
            ),
            row(
                "set_retval",
                self.set_retval,
                "connect() to a Service without endpoints fails at once (bpf_set_retval)",
                "fallback: connect() to a Service without endpoints gets EPERM instead of ECONNREFUSED",
            ),
            row("batch_ops", self.batch_ops, "map updates in batches", "fallback: map updates one element at a time"),
            row("xdp", self.xdp, "XDP programs load (native mode per driver, checked at attach)", "refused: no XDP fast path, tc alone"),
        ]
    }

    /// One line per feature, for logs and `status`.
    pub fn render_table(&self) -> String {
        let mut s = format!("kernel {}\n", self.release);
        for r in self.rows() {
            let _ = writeln!(s, "  {:<20} {:<3} {}", r.name, if r.available { "yes" } else { "no" }, r.effect);
        }
        s
    }

    /// The Prometheus text exposition of the table: one gauge per feature
    /// (1 available, 0 not) and an info metric with the kernel release.
    pub fn render_metrics(&self) -> String {
        let mut s = String::from(
            "# HELP sluice_kernel_feature Kernel features probed at start (1 available, 0 missing: a fallback is used or the capability refused).\n\
             # TYPE sluice_kernel_feature gauge\n",
        );
        for r in self.rows() {
            let _ = writeln!(s, "sluice_kernel_feature{{feature=\"{}\"}} {}", r.name, u8::from(r.available));
        }
        let _ = write!(
            s,
            "# HELP sluice_kernel_info The running kernel.\n# TYPE sluice_kernel_info gauge\nsluice_kernel_info{{release=\"{}\",tc_mode=\"{}\"}} 1\n",
            escape_label(&self.release),
            if self.tcx { "tcx" } else { "legacy" }
        );
        s
    }

    /// Logs the table (once per process through [`Self::get`]).
    pub fn log(&self) {
        info!(kernel = %self.release, tc = %self.tc_mode(), "kernel features:\n{}", self.render_table());
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn release() -> String {
    // SAFETY: uname writes into the zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: the kernel NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned()
}

/// Only the tc probe (one query): for short-lived processes such as the
/// CNI plugin, which need nothing else from the table.
pub fn probe_tc_mode() -> TcMode {
    if !forced_legacy() && probe_tcx() {
        TcMode::Tcx
    } else {
        TcMode::Legacy
    }
}

fn forced_legacy() -> bool {
    std::env::var_os("SLUICE_TC_MODE").is_some_and(|v| v == "legacy")
}

/// TCX exists when the kernel answers a TCX query on loopback (a read;
/// kernels before 6.6 reject the attach type with EINVAL).
fn probe_tcx() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok()
}

fn probe_btf_func(name: &str) -> bool {
    std::fs::read("/sys/kernel/btf/vmlinux").is_ok_and(|btf| btf_has_name(&btf, name))
}

/// Whether `name` is one of the names in a BTF blob's string section (a
/// kernel function's name appears there exactly when the kernel has it;
/// kfuncs are never inlined away). Reads only the header and the strings.
pub fn btf_has_name(btf: &[u8], name: &str) -> bool {
    let u32_at = |at: usize| btf.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    // struct btf_header: magic u16, version u8, flags u8, hdr_len, type_off, type_len, str_off, str_len
    if btf.get(0..2) != Some(&0xeb9f_u16.to_le_bytes()[..]) {
        return false;
    }
    let (Some(hdr_len), Some(str_off), Some(str_len)) = (u32_at(4), u32_at(16), u32_at(20)) else { return false };
    let Some(strings) = btf.get(hdr_len + str_off..hdr_len + str_off + str_len) else { return false };
    strings.split(|b| *b == 0).any(|s| s == name.as_bytes())
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr large enough for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<[u64; 16]>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A one-entry hash map and one BPF_MAP_UPDATE_BATCH into it.
fn probe_batch_ops() -> io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    const BPF_MAP_TYPE_HASH: u64 = 1;
    let mut attr = [0u64; 16];
    // map_type, key_size | value_size, max_entries
    attr[0] = BPF_MAP_TYPE_HASH | (4 << 32);
    attr[1] = 4 | (1 << 32);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: a fresh fd from the kernel, owned here.
    let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let key = 1u32;
    let value = 2u32;
    let mut attr = [0u64; 16];
    // in_batch, out_batch, keys, values, count | map_fd, elem_flags, flags
    attr[2] = std::ptr::addr_of!(key) as u64;
    attr[3] = std::ptr::addr_of!(value) as u64;
    attr[4] = 1 | ((map.as_raw_fd() as u64) << 32);
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map(drop)
}

/// SOCK_DESTROY of a UDP socket this probe opened (bound to 127.0.0.1, no
/// packet sent): 0 where CONFIG_INET_DIAG_DESTROY is built, EOPNOTSUPP
/// where it is not.
fn probe_sock_diag_destroy() -> io::Result<()> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const SOCK_DESTROY: u16 = SOCK_DIAG_BY_FAMILY + 1;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = sock.local_addr()?.port();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd, owned here.
    let nl = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16) + inet_diag_req_v2 (56).
    let mut msg = [0u8; 72];
    msg[0..4].copy_from_slice(&72u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DESTROY.to_ne_bytes());
    msg[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let req = &mut msg[16..];
    req[0] = libc::AF_INET as u8;
    req[1] = libc::IPPROTO_UDP as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req[8..10].copy_from_slice(&port.to_be_bytes()); // sport
    req[12..16].copy_from_slice(&[127, 0, 0, 1]); // src
    req[48..56].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    // SAFETY: sending a buffer we own on our socket (to the kernel: nladdr zero = kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    let sent = unsafe {
        libc::sendto(
            nl.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 512];
    // SAFETY: receiving into a buffer we own.
    let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other("no acknowledgement for SOCK_DESTROY"));
    }
    let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    drop(sock);
    if errno == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f61() -> KernelFeatures {
        KernelFeatures {
            release: "6.1.0-57-amd64".into(),
            btf: true,
            tcx: false,
            sock_destroy_kfunc: false,
            sock_diag_destroy: true,
            set_retval: true,
            batch_ops: true,
            xdp: true,
        }
    }

    #[test]
    fn a_kernel_without_tcx_attaches_through_legacy_tc_and_says_so() {
        let f = f61();
        assert_eq!(f.tc_mode(), TcMode::Legacy);
        let table = f.render_table();
        assert!(table.contains("kernel 6.1.0-57-amd64"), "{table}");
        assert!(table.lines().any(|l| l.contains("tcx") && l.contains(" no ") && l.contains("legacy tc")), "{table}");
        assert_eq!(KernelFeatures { tcx: true, ..f }.tc_mode(), TcMode::Tcx);
    }

    #[test]
    fn a_btf_name_is_found_only_as_a_whole_string() {
        let strings = b"\0bpf_sock_destroy\0bpf_sock_destroy_x\0";
        let mut blob = Vec::new();
        blob.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, 0, 0, strings.len() as u32] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        blob.extend_from_slice(strings);
        assert!(btf_has_name(&blob, "bpf_sock_destroy"));
        assert!(!btf_has_name(&blob, "bpf_sock"), "a prefix is not a name");
        assert!(!btf_has_name(&blob[..20], "bpf_sock_destroy"), "a truncated blob has no strings");
        assert!(!btf_has_name(b"not btf at all, not at all", "bpf_sock_destroy"));
    }

    #[test]
    fn metrics_have_one_gauge_per_feature_and_the_release() {
        let m = f61().render_metrics();
        assert!(m.contains("sluice_kernel_feature{feature=\"tcx\"} 0\n"), "{m}");
        assert!(m.contains("sluice_kernel_feature{feature=\"set_retval\"} 1\n"), "{m}");
        assert!(m.contains("sluice_kernel_info{release=\"6.1.0-57-amd64\",tc_mode=\"legacy\"} 1\n"), "{m}");
        assert_eq!(m.matches("sluice_kernel_feature{").count(), f61().rows().len());
        let odd = KernelFeatures { release: "x\"y".into(), ..f61() }.render_metrics();
        assert!(odd.contains("release=\"x\\\"y\""), "a quote in the release is escaped: {odd}");
    }

    /// On this machine's 6.18 every feature is there (ENVIRONMENT.md); in a
    /// 6.1 guest TCX and the kfunc are not. Needs root (bpf, sock_diag).
    #[test]
    fn probes_agree_with_the_running_kernel() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            panic!("needs root: the probes load programs and talk sock_diag");
        }
        let f = KernelFeatures::probe();
        let (major, minor) = {
            let mut it = f.release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
            (it.next().unwrap_or(0), it.next().unwrap_or(0))
        };
        let at_least = |a, b| (major, minor) >= (a, b);
        assert_eq!(f.tcx, at_least(6, 6), "TCX exists from 6.6: {f:?}");
        assert_eq!(f.set_retval, at_least(5, 18), "bpf_set_retval from 5.18: {f:?}");
        assert!(f.batch_ops && f.xdp, "batch ops and XDP on every supported kernel: {f:?}");
        if f.btf {
            assert_eq!(f.sock_destroy_kfunc, at_least(6, 5), "the kfunc from 6.5: {f:?}");
        }
    }
}
