//! `sluice-node`: the small shell every Sluice node daemon needs, written
//! once and shared by `sluice-proxy`, `sluice-cni daemon` and `sluice-dns`
//! (DESIGN.md: "written once and shared"). It imports none of them.

pub mod features;
pub mod tc;

pub use features::{KernelFeatures, TcMode};
pub mod bpffs;
pub mod http;
pub mod lock;
pub mod netlink;
pub mod logging;
