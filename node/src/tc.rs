//! Attaching tc programs on every supported kernel: TCX links where the
//! kernel has them (6.6+), else the legacy path, a clsact qdisc and a
//! cls_bpf filter in direct-action mode over netlink (aya's `SchedClassifier`
//! does both; `attach_with_options(TcxOrder)` is EINVAL before 6.6).
//!
//! Upgrades: a TCX link is pinned and the next agent swaps its program in
//! behind the pin (`BPF_LINK_UPDATE`). Legacy tc has no link to pin, so
//! every program owns a fixed [`LegacySlot`] (priority, handle): a restarted
//! agent finds its predecessor's filter there and replaces the program in
//! place (RTM_NEWTFILTER on the existing handle, atomic in cls_bpf), so
//! traffic never meets a moment without a program.
//!
//! Never half-attached: a call that attaches to several interfaces and
//! fails part-way detaches what it attached itself before returning the
//! error (a program swapped into a predecessor's link or filter is left
//! there: detaching it would cut traffic that was being served).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::tc::{self as aya_tc, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use tracing::{debug, info, warn};

pub use crate::features::TcMode;

/// Where a program sits on legacy tc: filters run in ascending priority,
/// and the (priority, handle) pair is how a restarted agent finds its
/// predecessor's filter to replace it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LegacySlot {
    pub priority: u16,
    pub handle: u16,
}

/// The slots of Sluice's programs. The proxy's external path runs before
/// the CNI's host routing on a shared underlay, as it does under TCX (the
/// proxy attaches first there and TCX appends).
pub mod slots {
    use super::LegacySlot;
    pub const PROXY_TC_INGRESS: LegacySlot = LegacySlot { priority: 0x2000, handle: 1 };
    pub const PROXY_TC_EGRESS: LegacySlot = LegacySlot { priority: 0x2000, handle: 1 };
    pub const CNI_TO_POD: LegacySlot = LegacySlot { priority: 0x3000, handle: 1 };
    pub const CNI_FROM_POD: LegacySlot = LegacySlot { priority: 0x3000, handle: 1 };
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("attaching {program} to {interface} {direction} ({mode}): {source}")]
    Attach { program: String, interface: String, direction: &'static str, mode: TcMode, source: ProgramError },
    #[error("adding the clsact qdisc to {interface}: {source}")]
    Qdisc { interface: String, source: aya_tc::TcError },
    #[error("tc link pinned at {path}: {source}")]
    Pin { path: PathBuf, source: io::Error },
}

fn direction(kind: TcAttachType) -> &'static str {
    match kind {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom parent",
    }
}

fn is_errno(e: &ProgramError, errno: i32) -> bool {
    match e {
        ProgramError::TcError(aya_tc::TcError::NetlinkError(n)) => n.raw_os_error() == Some(errno),
        ProgramError::NetlinkError(n) => n.raw_os_error() == Some(errno),
        ProgramError::SyscallError(s) => s.io_error.raw_os_error() == Some(errno),
        _ => false,
    }
}

/// Adds the clsact qdisc unless the interface has one. Returns whether it
/// was added.
pub fn ensure_clsact(interface: &str) -> Result<bool, Error> {
    match aya_tc::qdisc_add_clsact(interface) {
        Ok(()) => Ok(true),
        Err(aya_tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(source) => Err(Error::Qdisc { interface: interface.into(), source }),
    }
}

/// How an attachment came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// A new TCX link or legacy filter.
    Attached,
    /// The program replaced a predecessor's behind its pinned link or in
    /// its legacy filter slot.
    Replaced,
}

/// One tc attachment owned by the caller: dropping it detaches (as aya's
/// links do), [`TcLink::persist`] leaves it in the kernel.
#[derive(Debug)]
pub struct TcLink {
    pub interface: String,
    pub kind: TcAttachType,
    pub mode: TcMode,
    pub how: How,
    link: Option<SchedClassifierLink>,
}

impl TcLink {
    /// Leaves the attachment in the kernel beyond this process: a TCX link
    /// is pinned at `pin` (where the next agent finds it), a legacy filter
    /// simply stays (the next agent finds it by its slot).
    pub fn persist(mut self, pin: &Path) -> Result<(), Error> {
        let Some(link) = self.link.take() else { return Ok(()) };
        match self.mode {
            TcMode::Tcx => {
                let fd = FdLink::try_from(link).map_err(|e| Error::Pin { path: pin.into(), source: io::Error::other(e.to_string()) })?;
                fd.pin(pin).map_err(|e| Error::Pin { path: pin.into(), source: io::Error::other(e.to_string()) })?;
            }
            // A netlink filter holds no fd: forgetting the handle is all
            // it takes for the filter to outlive us.
            TcMode::Legacy => std::mem::forget(link),
        }
        Ok(())
    }

    /// Detaches now.
    pub fn detach(mut self) {
        drop(self.link.take());
    }

    fn keep_in_kernel(mut self) {
        if let Some(link) = self.link.take() {
            std::mem::forget(link);
        }
    }
}

/// Attaches `prog` to every `(interface, direction)` in `targets`, all or
/// nothing: when one fails, the ones this call attached are detached again
/// and the error names the one that failed. Legacy filters go into `slot`,
/// replacing a program already there in place.
pub fn attach(prog: &mut SchedClassifier, targets: &[(&str, TcAttachType)], mode: TcMode, slot: LegacySlot) -> Result<Vec<TcLink>, Error> {
    let mut done: Vec<TcLink> = Vec::with_capacity(targets.len());
    for (interface, kind) in targets {
        match attach_one(prog, interface, *kind, mode, slot) {
            Ok(link) => done.push(link),
            Err(e) => {
                rollback(done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

fn rollback(done: Vec<TcLink>) {
    for link in done.into_iter().rev() {
        match link.how {
            How::Attached => {
                debug!(interface = %link.interface, "rolling back a tc attach");
                link.detach();
            }
            How::Replaced => link.keep_in_kernel(),
        }
    }
}

fn attach_one(prog: &mut SchedClassifier, interface: &str, kind: TcAttachType, mode: TcMode, slot: LegacySlot) -> Result<TcLink, Error> {
    let name = prog_name(prog);
    let err = |source| Error::Attach { program: name.clone(), interface: interface.into(), direction: direction(kind), mode, source };
    let (id, how) = match mode {
        TcMode::Tcx => (prog.attach_with_options(interface, kind, TcAttachOptions::TcxOrder(LinkOrder::default())).map_err(err)?, How::Attached),
        TcMode::Legacy => {
            ensure_clsact(interface)?;
            let opts = NlOptions { priority: slot.priority, handle: TcHandle::new(0, slot.handle), classid: None };
            match prog.attach_with_options(interface, kind, TcAttachOptions::Netlink(opts)) {
                Ok(id) => (id, How::Attached),
                // A predecessor's filter in our slot: replace its program in place.
                Err(e) if is_errno(&e, libc::EEXIST) => {
                    let existing = SchedClassifierLink::attached(interface, kind, slot.priority, TcHandle::new(0, slot.handle), None)
                        .map_err(|e| err(ProgramError::TcError(aya_tc::TcError::IoError(e))))?;
                    (prog.attach_to_link(existing).map_err(err)?, How::Replaced)
                }
                Err(e) => return Err(err(e)),
            }
        }
    };
    let link = prog.take_link(id).map_err(err)?;
    Ok(TcLink { interface: interface.into(), kind, mode, how, link: Some(link) })
}

fn prog_name(prog: &SchedClassifier) -> String {
    prog.info().ok().and_then(|i| i.name_as_str().map(str::to_string)).unwrap_or_else(|| "tc program".into())
}

/// Attaches `prog` so it outlives this process, on every `(interface,
/// pin)`: TCX swaps the program in behind a link already pinned at `pin`
/// or attaches and pins a new one; legacy tc replaces or adds the filter in
/// `slot`. All or nothing, as [`attach`].
pub fn attach_persistent(
    prog: &mut SchedClassifier,
    kind: TcAttachType,
    targets: &[(&str, PathBuf)],
    mode: TcMode,
    slot: LegacySlot,
) -> Result<Vec<How>, Error> {
    let mut created_pins: Vec<PathBuf> = Vec::new();
    let mut legacy_new: Vec<(String, LegacySlot)> = Vec::new();
    let mut out = Vec::with_capacity(targets.len());
    let result = (|| {
        for (interface, pin) in targets {
            if mode == TcMode::Tcx && pin.exists() {
                let fd = prog.fd().map_err(|source| Error::Attach {
                    program: prog_name(prog),
                    interface: (*interface).into(),
                    direction: direction(kind),
                    mode,
                    source,
                })?;
                let link = obj_get(pin).map_err(|source| Error::Pin { path: pin.clone(), source })?;
                link_update(link.as_fd(), fd.as_fd()).map_err(|source| Error::Pin { path: pin.clone(), source })?;
                debug!(interface, pin = %pin.display(), "program swapped in behind the pinned tc link");
                out.push(How::Replaced);
                continue;
            }
            let link = attach_one(prog, interface, kind, mode, slot)?;
            let how = link.how;
            if mode == TcMode::Legacy && how == How::Attached {
                legacy_new.push(((*interface).to_string(), slot));
            }
            link.persist(pin)?;
            if mode == TcMode::Tcx {
                created_pins.push(pin.clone());
            }
            info!(interface, mode = %mode, replaced = how == How::Replaced, "tc program attached");
            out.push(how);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for pin in created_pins {
            let _ = std::fs::remove_file(&pin); // the last reference: the link detaches
        }
        for (interface, slot) in legacy_new {
            if let Err(d) = detach_legacy(&interface, kind, slot) {
                warn!(interface, error = %d, "rolling back a legacy tc filter failed");
            }
        }
        return Err(e);
    }
    Ok(out)
}

/// Removes the legacy filter in `slot` (absent is fine).
pub fn detach_legacy(interface: &str, kind: TcAttachType, slot: LegacySlot) -> Result<(), ProgramError> {
    let link = SchedClassifierLink::attached(interface, kind, slot.priority, TcHandle::new(0, slot.handle), None)
        .map_err(|e| ProgramError::TcError(aya_tc::TcError::IoError(e)))?;
    match aya::programs::Link::detach(link) {
        Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::EINVAL) => Ok(()),
        other => other,
    }
}

/// Removes every legacy tc filter whose program is one of `programs`, on
/// every interface of the current network namespace (cleanup: legacy
/// filters have no pins to find them by). Returns how many interfaces had
/// one.
pub fn detach_legacy_named(programs: &[&str]) -> usize {
    let mut removed = 0;
    for interface in interfaces() {
        for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
            for name in programs {
                // cls_bpf keeps the program's name as the filter's name.
                if aya_tc::qdisc_detach_program(&interface, kind, name).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

fn interfaces() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Attaches the program pinned at `pin` to `interface`'s tc hook so that
/// the attachment lasts as long as the device (the CNI plugin does this for
/// every pod veth, and exits): TCX through `BPF_PROG_ATTACH` (no link to
/// hold), legacy tc through a filter in `slot`.
pub fn attach_pinned_for_device(pin: &Path, interface: &str, kind: TcAttachType, mode: TcMode, slot: LegacySlot) -> Result<(), Error> {
    let err = |source| Error::Attach { program: pin.display().to_string(), interface: interface.into(), direction: direction(kind), mode, source };
    match mode {
        TcMode::Tcx => {
            let prog = obj_get(pin).map_err(|source| Error::Pin { path: pin.into(), source })?;
            let ifindex = ifindex(interface).map_err(|e| err(ProgramError::TcError(aya_tc::TcError::IoError(e))))?;
            prog_attach_tcx(prog.as_fd(), ifindex, kind).map_err(|io_error| err(ProgramError::SyscallError(aya::sys::SyscallError { call: "bpf_prog_attach", io_error })))
        }
        TcMode::Legacy => {
            let mut prog = SchedClassifier::from_pin(pin).map_err(err)?;
            let link = attach_one(&mut prog, interface, kind, mode, slot)?;
            link.keep_in_kernel();
            Ok(())
        }
    }
}

fn ifindex(interface: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(interface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `enum bpf_attach_type`: BPF_TCX_INGRESS, BPF_TCX_EGRESS (6.6).
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u32; 12]) -> io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr prefix valid for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<[u32; 12]>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let ptr = c.as_ptr() as u64;
    let mut attr = [0u32; 12];
    attr[0] = ptr as u32;
    attr[1] = (ptr >> 32) as u32;
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: a fresh fd from the kernel, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn prog_attach_tcx(prog: BorrowedFd<'_>, ifindex: u32, kind: TcAttachType) -> io::Result<()> {
    let attach_type = match kind {
        TcAttachType::Ingress => BPF_TCX_INGRESS,
        TcAttachType::Egress => BPF_TCX_EGRESS,
        TcAttachType::Custom(_) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "TCX has no custom parents")),
    };
    // target_ifindex, attach_bpf_fd, attach_type, attach_flags, ...
    let mut attr = [0u32; 12];
    attr[0] = ifindex;
    attr[1] = prog.as_raw_fd() as u32;
    attr[2] = attach_type;
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // link_fd, new_prog_fd, flags, old_prog_fd
    let mut attr = [0u32; 12];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}
