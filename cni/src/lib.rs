//! sluice-cni: the CNI plugin (routed pod veths, built-in IPAM) and the node
//! daemon connecting the nodes' pod subnets with VXLAN or host-gw routes.
//!
//! The binary is thin: [`plugin::main_from_env`] without arguments (a
//! runtime sets `CNI_COMMAND`), [`daemon::run`] for `sluice-cni daemon`
//! (its flags are [`cli`]'s).

pub mod bpf;
pub mod cli;
pub mod hostrouting;
pub mod invocation;
pub mod install;
pub mod ipam;
pub mod logging;
pub mod nl;
pub mod plugin;
pub mod spec;
pub mod subnet;
pub mod daemon;
pub mod model;
