//! The few kernel calls aya does not expose: BPF_OBJ_GET/BPF_LINK_UPDATE for
//! replacing the program behind a pinned link without detaching it, bpffs
//! detection and mounting, and cgroup v2 discovery.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

pub use sluice_node::bpffs::{is_bpffs, obj_get};

/// Atomically replaces the program behind a link: traffic never sees a gap.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_LINK_UPDATE and outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, &mut attr as *mut LinkUpdateAttr, size_of::<LinkUpdateAttr>())
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `keys[i] -> values[i]` into the map `map` in one syscall
/// (BPF_MAP_UPDATE_BATCH, in order; on error the first ones may be written).
/// `K` and `V` must be the map's key and value layouts.
pub fn map_update_batch<K, V>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(keys.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for the command; the key and
    // value arrays hold `count` elements each and outlive the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>())
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes sure `dir` exists on a bpffs, mounting one on it when it is not.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if is_bpffs(dir)? {
        return Ok(());
    }
    let target = cstring(dir)?;
    let fstype = CString::new("bpf").expect("static");
    // SAFETY: plain mount(2) with valid C strings.
    if unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cgroup v2 mount point of this host (`/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // fields: id parent maj:min root mountpoint opts... - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mp));
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount in /proc/self/mountinfo"))
}
