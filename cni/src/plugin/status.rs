//! STATUS: whether this plugin can take ADDs now.
//!
//! 50 until the daemon has published this node's pod subnet; 51 while the
//! subnet file does not say `"ready": true` (the daemon lost its source,
//! keeps failing to reconcile, stopped, or never said so): existing pods
//! keep their connectivity, new peers may not be reachable. Always ready
//! with delegated IPAM or `podCidrs` in the config (no daemon needed).

use super::node_subnet;
use crate::spec::{Code, Error, NetConf, Result};

pub(super) fn status(conf: &NetConf) -> Result<()> {
    if conf.delegated_ipam().is_some() || !conf.pod_cidrs.is_empty() {
        return Ok(());
    }
    match node_subnet(conf) {
        Ok(Some(s)) if s.ready && !s.pod_cidrs.is_empty() => Ok(()),
        Ok(Some(s)) if !s.pod_cidrs.is_empty() => Err(Error::new(
            Code::PluginNotAvailableLimitedConnectivity,
            "the node daemon is not ready",
            format!(
                "{} is not marked ready (the daemon stopped, lost its source or keeps failing to reconcile); existing pods keep their connectivity",
                conf.subnet_file()
            ),
        )),
        Ok(_) => Err(Error::new(
            Code::PluginNotAvailable,
            "this node's pod subnet is not published yet",
            format!("{} does not exist or lists no pod range; is the sluice-cni daemon running?", conf.subnet_file()),
        )),
        Err(e) => Err(Error::new(Code::PluginNotAvailable, e.msg, e.details)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::run;
    use crate::spec::Env;
    use crate::subnet::NodeSubnet;

    fn status_conf(file: &Path) -> Vec<u8> {
        format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"sluice-cni","subnetFile":"{}"}}"#, file.display()).into_bytes()
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-cni-status-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn status_code(file: &Path) -> Option<u32> {
        let env = Env { command: "STATUS".into(), ..Env::default() };
        run(&env, &status_conf(file)).err().map(|e| e.code)
    }

    #[test]
    fn status_is_50_until_the_subnet_is_published_then_ok_and_51_when_not_ready() {
        let dir = scratch("cycle");
        let file = dir.join("subnet.json");
        assert_eq!(status_code(&file), Some(50));
        let mut s = NodeSubnet {
            node: "a".into(),
            pod_cidrs: vec!["198.18.1.0/24".parse().unwrap()],
            cluster_cidrs: vec![],
            mtu: 1450,
            backend: "vxlan".into(),
            ready: true,
            host_routing: None,
        };
        s.write(&file).unwrap();
        assert_eq!(status_code(&file), None);
        s.ready = false;
        s.write(&file).unwrap();
        assert_eq!(status_code(&file), Some(51));
        s.pod_cidrs.clear();
        s.write(&file).unwrap();
        assert_eq!(status_code(&file), Some(50), "no pod range: ADD cannot allocate");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_is_51_when_the_daemon_never_wrote_a_ready_state() {
        let dir = scratch("unset");
        let file = dir.join("subnet.json");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&file, br#"{"node":"a","podCidrs":["198.18.1.0/24"],"mtu":1450,"backend":"vxlan"}"#).unwrap();
        assert_eq!(status_code(&file), Some(51));
        std::fs::write(&file, b"{ torn").unwrap();
        assert_eq!(status_code(&file), Some(50), "an unreadable subnet file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_needs_no_daemon_with_pod_cidrs_or_delegated_ipam() {
        let env = Env { command: "STATUS".into(), ..Env::default() };
        let missing = "/nonexistent/subnet.json";
        let with_cidrs = format!(r#"{{"cniVersion":"1.1.0","name":"n","podCidrs":["198.18.1.0/24"],"subnetFile":"{missing}"}}"#);
        assert!(run(&env, with_cidrs.as_bytes()).is_ok());
        let delegated = format!(r#"{{"cniVersion":"1.1.0","name":"n","ipam":{{"type":"host-local"}},"subnetFile":"{missing}"}}"#);
        assert!(run(&env, delegated.as_bytes()).is_ok());
    }
}
