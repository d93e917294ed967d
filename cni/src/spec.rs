//! The CNI specification's wire types: versions, the network configuration a
//! plugin reads on stdin, the result and error objects it prints on stdout,
//! and the spec's error codes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Versions this plugin accepts in `cniVersion`, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version this plugin speaks when the caller does not say.
pub const LATEST_VERSION: &str = "1.1.0";

/// Error codes defined by the spec (1-99 are reserved) and this plugin's own (100+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    PluginNotAvailableLimitedConnectivity = 51,
    /// A kernel operation failed (netlink, namespaces).
    Internal = 100,
    /// ADD found the requested interface already present in the sandbox.
    InterfaceExists = 101,
    /// No free address is left in the node's pod ranges.
    RangeExhausted = 102,
}

/// The error object printed on stdout (and the process exits non-zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct Error {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { cni_version: LATEST_VERSION.to_owned(), code: code as u32, msg: msg.into(), details: details.into() }
    }

    pub fn with_version(mut self, version: &str) -> Self {
        version.clone_into(&mut self.cni_version);
        self
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A dotted version, compared numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `major.minor.patch`; only the versions this plugin supports are accepted.
    pub fn parse_supported(s: &str) -> Result<Self> {
        if !SUPPORTED_VERSIONS.contains(&s) {
            return Err(Error::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!("cniVersion {s:?} is not one of {SUPPORTED_VERSIONS:?}"),
            ));
        }
        let mut parts = s.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Ok(Self(parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
    }

    /// 1.0.0 dropped `ips[].version`.
    pub fn has_ip_version_field(self) -> bool {
        self < Version(1, 0, 0)
    }

    /// 1.1.0 added `interfaces[].mtu`, GC and STATUS.
    pub fn at_least_1_1(self) -> bool {
        self >= Version(1, 1, 0)
    }
}

/// The answer to VERSION.
#[derive(Debug, Serialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// One attachment named in GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration given to this plugin (one entry of a conflist,
/// with `name` and `cniVersion` filled in by the runtime).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    /// The pod interface MTU; derived from the daemon's published value or the
    /// underlay when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Delegated IPAM (`{"type": "host-local", ...}`); the built-in IPAM is
    /// used when absent or of type `sluice`.
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// Pod ranges to allocate from when no daemon state is wanted.
    #[serde(default)]
    pub pod_cidrs: Vec<IpNetwork>,
    /// Where the daemon publishes this node's subnet.
    #[serde(default)]
    pub subnet_file: Option<String>,
    /// Where the built-in IPAM keeps its store.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Append logs here instead of stderr.
    #[serde(default)]
    pub log_file: Option<String>,
    #[serde(default)]
    pub log_level: Option<String>,
    /// GC: attachments the runtime still uses.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC: the key used before the spec settled on `valid-attachments`.
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

/// Default locations (what the DaemonSet uses).
pub const DEFAULT_SUBNET_FILE: &str = "/run/sluice/subnet.json";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/sluice";

impl NetConf {
    /// Parses and validates stdin. Every failure is a spec error with the
    /// version the caller asked for when it could be read.
    pub fn parse(bytes: &[u8]) -> Result<(Self, Version)> {
        let raw: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::new(Code::Decode, "failed to decode network configuration", e.to_string()))?;
        let version_owned = raw.get("cniVersion").and_then(Value::as_str).unwrap_or("").to_owned();
        let version_str = version_owned.as_str();
        if version_str.is_empty() {
            return Err(Error::new(Code::InvalidConfig, "invalid network configuration", "cniVersion is missing"));
        }
        let version = Version::parse_supported(version_str)?;
        let conf: NetConf = serde_json::from_value(raw).map_err(|e| {
            Error::new(Code::InvalidConfig, "invalid network configuration", e.to_string()).with_version(version_str)
        })?;
        if let Some(mtu) = conf.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(Error::new(
                    Code::InvalidConfig,
                    "invalid network configuration",
                    format!("mtu {mtu} is outside 576..=65535"),
                )
                .with_version(version_str));
            }
        }
        if let Some(ipam) = &conf.ipam {
            if !ipam.is_object() || ipam.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(Error::new(
                    Code::InvalidConfig,
                    "invalid network configuration",
                    "ipam must be an object with a non-empty \"type\"",
                )
                .with_version(version_str));
            }
        }
        Ok((conf, version))
    }

    /// The delegated IPAM plugin's type, if the config names one.
    pub fn delegated_ipam(&self) -> Option<&str> {
        let t = self.ipam.as_ref()?.get("type")?.as_str()?;
        (t != "sluice" && t != "sluice-cni").then_some(t)
    }

    pub fn subnet_file(&self) -> &str {
        self.subnet_file.as_deref().unwrap_or(DEFAULT_SUBNET_FILE)
    }

    pub fn data_dir(&self) -> &str {
        self.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)
    }

    /// GC's list of attachments still in use, from either key.
    pub fn gc_valid(&self) -> Option<&[Attachment]> {
        self.valid_attachments.as_deref().or(self.attachments.as_deref())
    }
}

/// `interfaces[]` of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// `ips[]` of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Present only before 1.0.0 ("4" or "6").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// `routes[]` of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The ADD result (also the `prevResult` CHECK and chained plugins read).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub dns: Value,
}

impl AddResult {
    /// Shapes the result for the version the caller asked for: `ips[].version`
    /// before 1.0.0, `interfaces[].mtu` only from 1.1.0.
    pub fn for_version(mut self, version: Version, version_str: &str) -> Self {
        version_str.clone_into(&mut self.cni_version);
        for ip in &mut self.ips {
            ip.version = version
                .has_ip_version_field()
                .then(|| if ip.address.is_ipv4() { "4" } else { "6" }.to_owned());
        }
        if !version.at_least_1_1() {
            for i in &mut self.interfaces {
                i.mtu = None;
            }
        }
        self
    }
}

/// The environment a runtime sets for a plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Env {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let v = |k: &str| get(k).unwrap_or_default();
        Self {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
            path: v("CNI_PATH"),
        }
    }

    /// Checks the variables the spec requires for `command`.
    pub fn require(&self, needs: &[&str]) -> Result<()> {
        let missing: Vec<&str> = needs
            .iter()
            .copied()
            .filter(|k| match *k {
                "CNI_CONTAINERID" => self.container_id.is_empty(),
                "CNI_NETNS" => self.netns.is_empty(),
                "CNI_IFNAME" => self.ifname.is_empty(),
                "CNI_PATH" => self.path.is_empty(),
                _ => false,
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::new(Code::InvalidEnvironment, "missing required environment variables", missing.join(", ")))
        }
    }

    /// Validates the container id and interface name as the spec constrains them.
    pub fn validate_ids(&self) -> Result<()> {
        let id_ok = !self.container_id.is_empty()
            && self.container_id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !id_ok {
            return Err(Error::new(
                Code::InvalidEnvironment,
                "invalid CNI_CONTAINERID",
                format!("{:?} must be non-empty and use only [A-Za-z0-9_.-]", self.container_id),
            ));
        }
        let n = &self.ifname;
        if n.is_empty() || n.len() > 15 || n == "." || n == ".." || n.contains(['/', ':']) || n.contains(char::is_whitespace) {
            return Err(Error::new(
                Code::InvalidEnvironment,
                "invalid CNI_IFNAME",
                format!("{n:?} is not a valid interface name"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_supported_version_and_rejects_others_with_code_1() {
        for v in SUPPORTED_VERSIONS {
            let conf = format!(r#"{{"cniVersion":"{v}","name":"n","type":"sluice-cni"}}"#);
            assert!(NetConf::parse(conf.as_bytes()).is_ok(), "version {v} should parse");
        }
        let err = NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n","type":"sluice-cni"}"#).unwrap_err();
        assert_eq!(err.code, 1, "unknown version must be code 1, saw {err:?}");
    }

    #[test]
    fn invalid_json_is_code_6_and_missing_version_code_7() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(br#"{"name":"n"}"#).unwrap_err().code, 7);
    }

    #[test]
    fn wrongly_typed_field_and_bad_mtu_are_code_7_with_callers_version() {
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#).unwrap_err();
        assert_eq!((e.code, e.cni_version.as_str()), (7, "1.0.0"));
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","mtu":100}"#).unwrap_err();
        assert_eq!(e.code, 7);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{}}"#).unwrap_err();
        assert_eq!(e.code, 7);
    }

    #[test]
    fn gc_reads_both_attachment_keys() {
        let (c, _) = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.gc_valid().unwrap().len(), 1);
        let (c, _) = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.gc_valid().unwrap()[0].container_id, "b");
    }

    #[test]
    fn delegated_ipam_is_recognised_and_builtin_is_not_delegation() {
        let (c, _) =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[]}}"#).unwrap();
        assert_eq!(c.delegated_ipam(), Some("host-local"));
        let (c, _) = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"sluice"}}"#).unwrap();
        assert_eq!(c.delegated_ipam(), None);
    }

    fn sample_result() -> AddResult {
        AddResult {
            cni_version: String::new(),
            interfaces: vec![Interface { name: "eth0".into(), mac: "0a:58:c6:12:01:02".into(), mtu: Some(1450), sandbox: "/run/netns/x".into() }],
            ips: vec![IpConfig {
                version: None,
                address: "198.18.1.2/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("169.254.1.1".parse().unwrap()) }],
            dns: Value::Null,
        }
    }

    #[test]
    fn result_json_follows_the_requested_version() {
        let v040 = serde_json::to_value(sample_result().for_version(Version(0, 4, 0), "0.4.0")).unwrap();
        assert_eq!(v040["ips"][0]["version"], "4");
        assert!(v040["interfaces"][0].get("mtu").is_none(), "0.4.0 has no interface mtu: {v040}");
        let v100 = serde_json::to_value(sample_result().for_version(Version(1, 0, 0), "1.0.0")).unwrap();
        assert!(v100["ips"][0].get("version").is_none(), "1.0.0 has no ips[].version: {v100}");
        let v110 = serde_json::to_value(sample_result().for_version(Version(1, 1, 0), "1.1.0")).unwrap();
        assert_eq!(v110["interfaces"][0]["mtu"], 1450);
        assert_eq!(v110["cniVersion"], "1.1.0");
        assert_eq!(v110["ips"][0]["address"], "198.18.1.2/32");
        assert!(v110.get("dns").is_none());
    }

    #[test]
    fn error_json_has_spec_fields() {
        let e = Error::new(Code::InvalidEnvironment, "missing", "CNI_NETNS");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "missing");
        assert_eq!(v["details"], "CNI_NETNS");
        assert_eq!(v["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn env_reports_every_missing_variable() {
        let env = Env { command: "ADD".into(), ifname: "eth0".into(), ..Env::default() };
        let e = env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]).unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(e.details, "CNI_CONTAINERID, CNI_NETNS");
    }

    #[test]
    fn invalid_ifname_and_container_id_are_rejected() {
        let mut env = Env { container_id: "abc".into(), ifname: "a/b".into(), ..Env::default() };
        assert_eq!(env.validate_ids().unwrap_err().code, 4);
        env.ifname = "eth0".into();
        env.container_id = "a b".into();
        assert_eq!(env.validate_ids().unwrap_err().code, 4);
        env.container_id = "abc-1_2.3".into();
        assert!(env.validate_ids().is_ok());
    }
}
