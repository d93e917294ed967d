//! `sluice-cni daemon --host-routing ebpf`: pod-to-pod traffic skips the
//! node's IP forwarding path (see cni-ebpf for what the programs do).
//!
//! The daemon loads the programs with this node's ranges baked in, attaches
//! `slc_to_pod` to tc ingress of the VXLAN device and the underlay (TCX
//! links, or legacy cls_bpf filters on kernels without TCX, that it holds:
//! if the daemon stops they go, and traffic takes the kernel's path again,
//! which is always correct), and pins `slc_from_pod`
//! under `--bpffs` for the plugin to attach to each new pod's host veth. The
//! pin's path reaches the plugin through the subnet file.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use cni_common::Config;
use ipnetwork::IpNetwork;
use sluice_node::tc::{self, slots, TcLink};
use sluice_node::KernelFeatures;
use tracing::info;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-cni-ebpf"));

/// The embedded eBPF object, for tests that load its programs themselves
/// (the `BPF_PROG_TEST_RUN` tests in `tests/tests/bpf_test_run.rs`).
pub fn object() -> &'static [u8] {
    OBJECT
}

pub const FROM_POD: &str = "slc_from_pod";
pub const TO_POD: &str = "slc_to_pod";
const CONFIG: &str = "SLC_CNI_CFG";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bpffs {path}: {source}")]
    Bpffs { path: PathBuf, source: io::Error },
    #[error("loading the host-routing programs: {0}")]
    Load(String),
    #[error(transparent)]
    Attach(#[from] tc::Error),
}

/// What the programs need to know (`SLC_CNI_CFG` in cni-ebpf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub cluster: Vec<IpNetwork>,
    pub local: Vec<IpNetwork>,
    /// This node's underlay address (the outer destination of VXLAN packets).
    pub node_ip: std::net::Ipv4Addr,
    /// The underlay interface's index.
    pub underlay_if: u32,
    /// (UDP port, VNI, device ifindex) when this node runs a VXLAN device.
    pub vxlan: Option<(u16, u32, u32)>,
}

/// The programs' configuration: the IPv4 cluster ranges, this node's IPv4
/// pod range, the VXLAN port and VNI, this node's address, all as the
/// programs read them from packets (network byte order). IPv6 ranges are
/// not fast-pathed.
pub fn config(p: &Params) -> Config {
    let v4 = |n: &IpNetwork| match n {
        IpNetwork::V4(n) => Some([u32::from_ne_bytes(n.network().octets()), u32::from_ne_bytes(n.mask().octets())]),
        IpNetwork::V6(_) => None,
    };
    let mut cfg = Config::ZERO;
    for (slot, range) in cfg.cluster.iter_mut().zip(p.cluster.iter().filter_map(v4)) {
        *slot = range;
        cfg.cluster_count += 1;
    }
    if let Some(range) = p.local.iter().find_map(v4) {
        cfg.local = range;
    }
    if let Some((port, vni, index)) = p.vxlan {
        cfg.vxlan_port = u32::from(u16::from_ne_bytes(port.to_be_bytes()));
        cfg.vxlan_vni = u32::from_ne_bytes((vni << 8).to_be_bytes());
        cfg.vxlan_if = index;
    }
    cfg.node_ip = u32::from_ne_bytes(p.node_ip.octets());
    cfg.underlay_if = p.underlay_if;
    cfg
}

/// Loaded programs and where `slc_to_pod` is attached (interface name ->
/// (ifindex, link); dropping a link detaches it). `attached` is declared
/// first so it drops before the programs.
struct Loaded {
    attached: BTreeMap<String, (u32, TcLink)>,
    cfg: Config,
    bpf: Ebpf,
}

pub struct HostRouting {
    bpffs: PathBuf,
    loaded: Option<Loaded>,
}

impl HostRouting {
    pub fn new(bpffs: PathBuf) -> Self {
        Self { bpffs, loaded: None }
    }

    /// Where the plugin finds `slc_from_pod`.
    pub fn pin(&self) -> PathBuf {
        self.bpffs.join(FROM_POD)
    }

    /// Converges: programs loaded with `params` (reloaded when they
    /// change), `slc_to_pod` on exactly `interfaces` (name, ifindex).
    pub fn ensure(&mut self, params: &Params, interfaces: &[(String, u32)]) -> Result<PathBuf, Error> {
        let cfg = config(params);
        if self.loaded.as_ref().is_none_or(|l| l.cfg != cfg) {
            self.loaded = None; // dropping detaches the old links
            self.loaded = Some(self.load(cfg)?);
        }
        let loaded = self.loaded.as_mut().expect("just loaded");
        let prog: &mut SchedClassifier = loaded
            .bpf
            .program_mut(TO_POD)
            .ok_or_else(|| Error::Load(format!("{TO_POD} missing from the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| Error::Load(e.to_string()))?;
        // Stale: an interface no longer wanted, or recreated under the same name.
        let stale: Vec<String> = loaded
            .attached
            .iter()
            .filter(|(name, (index, _))| !interfaces.iter().any(|(n, i)| n == *name && i == index))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((_, link)) = loaded.attached.remove(&name) {
                link.detach(); // gone with its device already, most often
            }
        }
        // All new interfaces or none: a failure detaches what this call attached.
        let new: Vec<(&str, TcAttachType)> = interfaces
            .iter()
            .filter(|(name, _)| !loaded.attached.contains_key(name))
            .map(|(name, _)| (name.as_str(), TcAttachType::Ingress))
            .collect();
        let mode = KernelFeatures::get().tc_mode();
        for link in tc::attach(prog, &new, mode, slots::CNI_TO_POD)? {
            info!(program = TO_POD, interface = %link.interface, %mode, "attached (ingress)");
            let index = interfaces.iter().find(|(n, _)| *n == link.interface).map_or(0, |(_, i)| *i);
            loaded.attached.insert(link.interface.clone(), (index, link));
        }
        Ok(self.pin())
    }

    fn load(&self, cfg: Config) -> Result<Loaded, Error> {
        ensure_bpffs(&self.bpffs).map_err(|source| Error::Bpffs { path: self.bpffs.clone(), source })?;
        let mut bpf = EbpfLoader::new()
            .override_global(CONFIG, &cfg, true)
            .load(OBJECT)
            .map_err(|e| Error::Load(e.to_string()))?;
        for name in [FROM_POD, TO_POD] {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or_else(|| Error::Load(format!("{name} missing from the object")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| Error::Load(e.to_string()))?;
            prog.load().map_err(|e| Error::Load(format!("{name}: {e}")))?;
        }
        // Re-pin: pods attached from now on get this version; earlier pods keep theirs.
        let pin = self.pin();
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Bpffs { path: pin, source }),
        }
        let prog: &mut SchedClassifier = bpf.program_mut(FROM_POD).expect("loaded above").try_into().expect("checked above");
        prog.pin(&pin).map_err(|e| Error::Load(format!("pinning {FROM_POD} at {}: {e}", pin.display())))?;
        let local = cfg.local[0].to_ne_bytes();
        info!(pin = %pin.display(), local_v4 = %IpAddr::from(local), cluster_ranges = cfg.cluster_count, "host-routing programs loaded");
        Ok(Loaded { attached: BTreeMap::new(), cfg, bpf })
    }
}

/// Makes sure `dir` exists on a bpffs, mounting one on it when it is not.
fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    std::fs::create_dir_all(dir)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = c"bpf";
    // SAFETY: plain mount(2) with valid C strings.
    if unsafe { libc::mount(fstype.as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(cluster: Vec<IpNetwork>, local: Vec<IpNetwork>) -> Params {
        Params { cluster, local, node_ip: "192.0.2.1".parse().unwrap(), underlay_if: 2, vxlan: Some((8472, 1, 7)) }
    }

    #[test]
    fn config_holds_v4_ranges_in_packet_byte_order() {
        let cluster: Vec<IpNetwork> = vec!["198.18.0.0/16".parse().unwrap(), "2001:db8:1::/48".parse().unwrap()];
        let local: Vec<IpNetwork> = vec!["2001:db8:1:1::/64".parse().unwrap(), "198.18.1.0/24".parse().unwrap()];
        let c = config(&params(cluster, local));
        assert_eq!(c.cluster_count, 1, "one IPv4 cluster range");
        assert_eq!(c.cluster[0][0].to_ne_bytes(), [198, 18, 0, 0]);
        assert_eq!(c.cluster[0][1].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(c.local[0].to_ne_bytes(), [198, 18, 1, 0]);
        assert_eq!(c.local[1].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(c.vxlan_port.to_ne_bytes(), [0x21, 0x18, 0, 0], "8472 as the UDP header holds it");
        assert_eq!(c.vxlan_vni.to_ne_bytes(), [0, 0, 1, 0], "VNI 1 in bytes 4..7 of the VXLAN header");
        assert_eq!(c.node_ip.to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!((c.vxlan_if, c.underlay_if), (7, 2), "VXLAN device and underlay ifindexes");
        let no_vxlan = config(&Params { vxlan: None, ..params(vec![], vec![]) });
        assert_eq!(no_vxlan.vxlan_port, 0, "port 0: no decapsulation");
    }

    #[test]
    fn config_keeps_at_most_four_cluster_ranges() {
        let cluster: Vec<IpNetwork> = (0..6).map(|i| format!("10.{i}.0.0/16").parse().unwrap()).collect();
        assert_eq!(config(&params(cluster, vec![])).cluster_count, 4);
    }
}
