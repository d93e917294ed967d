//! sluice-proxy: the node agent that replaces kube-proxy.
//!
//! Layers, from pure to I/O: [`model`] (Kubernetes objects to desired state),
//! [`plan`] (desired vs programmed to an ordered diff), [`dataplane`] (the
//! narrow kernel interface) with [`ebpf`] as its implementation, and
//! [`agent`] (sources, signals, the loop).

pub mod agent;
pub mod config;
pub mod dataplane;
pub mod ebpf;
pub mod external;
pub mod external_dp;
pub mod ipvs;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod sockdestroy;
pub mod status;
pub mod sys;
