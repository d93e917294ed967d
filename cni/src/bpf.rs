//! Putting the daemon's pinned `slc_from_pod` program on a new pod's
//! host-side veth, so that it stays there as long as the veth does (DEL
//! removes the veth, and the attachment with it): on TCX kernels through
//! `BPF_PROG_ATTACH` (no bpf_link that would die with the plugin process),
//! on older ones through a legacy cls_bpf filter (`sluice_node::tc`).

use std::io;
use std::path::Path;

use aya::programs::TcAttachType;
use sluice_node::tc::{self, slots};

/// Attaches the program pinned at `pin` to tc ingress of `ifindex` (TCX
/// where the kernel has it, else clsact + cls_bpf), after any program
/// already there. The name is kept for the plugin's call site.
pub fn attach_tcx_ingress(pin: &Path, ifindex: u32) -> io::Result<()> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `name`.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: if_indextoname NUL-terminated the buffer.
    let ifname = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    tc::attach_pinned_for_device(pin, &ifname, TcAttachType::Ingress, sluice_node::features::probe_tc_mode(), slots::CNI_FROM_POD)
        .map_err(io::Error::other)
}
