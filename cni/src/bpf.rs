//! The two bpf(2) calls the plugin needs to put the daemon's pinned
//! `slc_from_pod` program on a new pod's host-side veth. Raw syscalls rather
//! than aya: aya attaches tcx through a bpf_link that dies with the process,
//! while `BPF_PROG_ATTACH` leaves the program on the device until the device
//! goes (DEL removes the veth, and the attachment with it).

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd as _;
use std::path::Path;

const BPF_PROG_ATTACH: libc::c_long = 8;
/// `enum bpf_attach_type`: BPF_TCX_INGRESS (Linux 6.6).
const BPF_TCX_INGRESS: u32 = 46;

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_ifindex: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
    expected_revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr is a valid bpf_attr prefix for `cmd` and outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

pub use sluice_node::bpffs::obj_get;

/// Attaches the program pinned at `pin` to tc ingress (tcx) of `ifindex`,
/// after any program already there.
pub fn attach_tcx_ingress(pin: &Path, ifindex: u32) -> io::Result<()> {
    let prog = obj_get(pin)?;
    let mut attr = ProgAttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TCX_INGRESS,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}
