//! The file through which the node daemon tells the plugin this node's pod
//! ranges and MTU (flannel's `subnet.env`, as JSON).

use std::fs;
use std::io;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSubnet {
    pub node: String,
    /// This node's pod ranges (`spec.podCIDRs`), one per family.
    pub pod_cidrs: Vec<IpNetwork>,
    /// The cluster-wide pod ranges (not masqueraded among themselves).
    #[serde(default)]
    pub cluster_cidrs: Vec<IpNetwork>,
    /// MTU for pod interfaces (underlay minus the encapsulation overhead).
    pub mtu: u32,
    pub backend: String,
    /// True only while the daemon reconciles: it writes false when it stops
    /// (shutdown) or keeps failing, and a file without the field counts as
    /// not ready. STATUS answers 51 then (pods keep working, new peers may
    /// not be reachable).
    #[serde(default)]
    pub ready: bool,
    /// `--host-routing ebpf`: the pinned program the plugin attaches to each
    /// new pod's host veth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_routing: Option<std::path::PathBuf>,
}

impl NodeSubnet {
    /// Reads the file; `Ok(None)` when it does not exist yet.
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self).expect("subnet serialises"))
    }
}

/// Replaces `path` with `bytes` so that readers see the old or the new file, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}
