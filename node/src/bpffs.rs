//! bpffs helpers every daemon that pins objects needs: open a pinned
//! object (`BPF_OBJ_GET`), tell whether a directory is on a bpf filesystem,
//! and make a pin directory usable (mounting a bpffs when there is none),
//! with errors that say what to do.

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

const BPF_OBJ_GET: libc::c_long = 7;
/// `statfs.f_type` of a bpf filesystem.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where hosts mount their bpffs (systemd does at boot on most distributions).
pub const STANDARD_MOUNT: &str = "/sys/fs/bpf";

/// The `BPF_OBJ_GET` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Opens a pinned BPF object (link, map or program).
///
/// # Errors
/// The kernel's: `ENOENT` when nothing is pinned there, `EPERM` without
/// CAP_BPF, `EINVAL` when the path is not on a bpffs.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    let mut attr = ObjGetAttr { pathname: path.as_ptr() as u64, ..Default::default() };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_OBJ_GET; it and the
    // path it points to outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &raw mut attr, size_of::<ObjGetAttr>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(BPF_OBJ_GET) returned an fd out of range"))?;
    // SAFETY: the kernel returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `path` lives on a bpf filesystem.
///
/// # Errors
/// When `path` cannot be looked up (e.g. it does not exist).
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = cstring(path)?;
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[expect(clippy::unnecessary_cast, reason = "f_type's width differs between architectures")]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{dir} is not on a bpf filesystem and mounting one on {mount_point} failed ({cause}). \
         Mount the host's bpffs once with `mount -t bpf bpf {STANDARD_MOUNT}` (systemd does this at boot on \
         most distributions); in a container, mount the host's {STANDARD_MOUNT} (hostPath, mountPropagation: \
         HostToContainer); or choose a directory on a bpffs with --bpffs"
    )]
    Mount { dir: PathBuf, mount_point: PathBuf, cause: io::Error },
    #[error(
        "cannot create {dir} ({cause}): its parent {parent} is not on a bpf filesystem. Mount one with \
         `mount -t bpf bpf {STANDARD_MOUNT}`, or choose a directory on a bpffs with --bpffs"
    )]
    Create { dir: PathBuf, parent: PathBuf, cause: io::Error },
    #[error("{dir}: {cause}")]
    Io { dir: PathBuf, cause: io::Error },
}

/// What [`ensure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// `dir` already was on a bpffs (created if it was missing).
    Present,
    /// A bpffs was mounted on this directory (`dir` or the standard mount point above it).
    Mounted(PathBuf),
}

/// Makes `dir` a directory on a bpffs: creates it under an existing bpffs,
/// or mounts a bpffs on it, or (when `dir` is below an unmounted
/// [`STANDARD_MOUNT`], which cannot hold directories of its own) mounts
/// one on [`STANDARD_MOUNT`] first, as systemd would have.
///
/// # Errors
/// [`Error`], whose message says what to do.
pub fn ensure(dir: &Path) -> Result<Ensured, Error> {
    let io_err = |cause| Error::Io { dir: dir.to_owned(), cause };
    if dir.is_dir() {
        if is_bpffs(dir).map_err(io_err)? {
            return Ok(Ensured::Present);
        }
        mount(dir, dir)?;
        return Ok(Ensured::Mounted(dir.to_owned()));
    }
    let parent = dir.ancestors().skip(1).find(|a| a.is_dir()).unwrap_or(Path::new("/")).to_owned();
    let parent_is_bpffs = is_bpffs(&parent).map_err(io_err)?;
    if !parent_is_bpffs && parent == Path::new(STANDARD_MOUNT) {
        mount(dir, &parent)?;
        std::fs::create_dir_all(dir).map_err(io_err)?;
        return Ok(Ensured::Mounted(parent));
    }
    if let Err(cause) = std::fs::create_dir_all(dir) {
        return Err(if parent_is_bpffs { io_err(cause) } else { Error::Create { dir: dir.to_owned(), parent, cause } });
    }
    if parent_is_bpffs {
        return Ok(Ensured::Present);
    }
    mount(dir, dir)?;
    Ok(Ensured::Mounted(dir.to_owned()))
}

fn mount(dir: &Path, mount_point: &Path) -> Result<(), Error> {
    let fail = |cause| Error::Mount { dir: dir.to_owned(), mount_point: mount_point.to_owned(), cause };
    let target = cstring(mount_point).map_err(fail)?;
    let fstype = c"bpf";
    // SAFETY: plain mount(2) with valid C strings and no data.
    if unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obj_get_of_a_missing_pin_is_an_error_not_a_crash() {
        let err = obj_get(Path::new("/nonexistent/sluice/pin")).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        assert!(obj_get(Path::new("bad\0path")).is_err());
    }

    #[test]
    fn tmp_is_not_a_bpffs() {
        assert!(!is_bpffs(&std::env::temp_dir()).unwrap());
        assert!(is_bpffs(Path::new("/nonexistent/x")).is_err());
    }

    #[test]
    fn mount_errors_say_what_to_do() {
        let e = Error::Mount {
            dir: "/sys/fs/bpf/sluice".into(),
            mount_point: "/sys/fs/bpf".into(),
            cause: io::Error::from_raw_os_error(libc::EPERM),
        };
        let text = e.to_string();
        assert!(std::error::Error::source(&e).is_none(), "the cause is in the message, not repeated as a source");
        for want in ["/sys/fs/bpf/sluice is not on a bpf filesystem", "mount -t bpf bpf /sys/fs/bpf", "--bpffs", "hostPath"] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
    }
}
