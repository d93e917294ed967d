//! Thin wrappers over the kernel interfaces the harness needs: iproute2,
//! setns, sysctls, cgroup v2 directories, bpffs mounts.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Directory under the cgroup v2 mount that holds every test cgroup.
pub const CGROUP_PARENT: &str = "sluice-tests";

/// Runs `ip <args>` and returns its stdout, or an error carrying the command and its stderr.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip -n <netns> <args>`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Runs `f` on a fresh thread that has joined the network namespace
/// `/run/netns/<netns>` (namespaces are per thread; the caller's is untouched).
/// A panic in `f` is propagated.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = File::open(format!("/run/netns/{netns}"))?;
    thread::scope(|s| {
        let h = s.spawn(move || {
            // SAFETY: setns(2) on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Writes sysctls (`("net.ipv4.ip_forward", "1")`) inside a network namespace.
pub fn sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<(), String> {
    in_netns(netns, || {
        for (key, value) in settings {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            fs::write(&path, value).map_err(|e| format!("sysctl {key}={value} in {netns}: {e}"))?;
        }
        Ok(())
    })
    .map_err(|e| format!("enter netns {netns}: {e}"))?
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup/unified` on
/// hybrid hosts, `/sys/fs/cgroup` on pure v2 ones), from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(p, _)| p)
}

/// (mount point, fstype) of every mount of this mount namespace.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let fstype = post.split(' ').next()?;
            Some((
                PathBuf::from(unescape_mountinfo(mount_point)),
                fstype.to_string(),
            ))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `<cgroup v2 mount>/sluice-tests`, or an error naming the problem.
pub fn cgroup_parent() -> Result<PathBuf, String> {
    cgroup2_root()
        .map(|r| r.join(CGROUP_PARENT))
        .ok_or_else(|| "no cgroup2 mount in /proc/self/mountinfo".to_string())
}

fn cgroup_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in a test cgroup and removes it, children first.
/// Refuses any path outside `<v2>/sluice-tests/`.
pub fn remove_cgroup_tree(dir: &Path, log: &mut Vec<String>) -> Result<(), String> {
    let parent = cgroup_parent()?;
    if !dir.starts_with(&parent) || dir == parent {
        return Err(format!(
            "refusing to remove cgroup {} (not under {})",
            dir.display(),
            parent.display()
        ));
    }
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path(), log)?;
            }
        }
    }
    // cgroup.kill (5.14+) kills the whole subtree atomically; the per-pid loop
    // covers older kernels.
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = cgroup_pids(dir);
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // Unkillable (e.g. in D state): move them up so the directory can go.
            if let Some(up) = dir.parent() {
                for pid in &pids {
                    let _ = fs::write(up.join("cgroup.procs"), pid.to_string());
                }
            }
            log.push(format!(
                "moved stray pids {pids:?} out of {}",
                dir.display()
            ));
            break;
        }
        for pid in pids {
            // SAFETY: kill(2); the pid is a member of a test-only cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    // rmdir fails with EBUSY until the killed tasks are fully gone.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => {
                log.push(format!("removed cgroup {}", dir.display()));
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("rmdir {}: {e}", dir.display()))
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Pids of processes whose network namespace is `/run/netns/<netns>`.
pub fn netns_pids(netns: &str) -> Vec<i32> {
    ip(&["netns", "pids", netns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills whatever still runs in the namespace, then deletes it.
pub fn delete_netns(netns: &str, log: &mut Vec<String>) -> Result<(), String> {
    if !Path::new("/run/netns").join(netns).exists() {
        return Ok(());
    }
    let pids = netns_pids(netns);
    for &pid in &pids {
        // SAFETY: kill(2) on a process living in a test-only network namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if !pids.is_empty() {
        log.push(format!("killed {pids:?} in netns {netns}"));
    }
    ip(&["netns", "del", netns])?;
    log.push(format!("deleted netns {netns}"));
    Ok(())
}

pub fn mount_bpffs(path: &Path) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
    let target = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount -t bpf {}: {}",
            path.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Lazily unmounts every mount at or below `path`, deepest first.
pub fn umount_below(path: &Path, log: &mut Vec<String>) -> Result<(), String> {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    let mut result = Ok(());
    for p in points {
        let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            log.push(format!("unmounted {}", p.display()));
        } else {
            result = Err(format!(
                "umount {}: {}",
                p.display(),
                io::Error::last_os_error()
            ));
        }
    }
    result
}

/// Removes a directory tree, but never one that still has a mount below it.
pub fn remove_tree(path: &Path, log: &mut Vec<String>) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    if mounts().iter().any(|(p, _)| p.starts_with(path)) {
        return Err(format!(
            "not removing {}: something is still mounted below it",
            path.display()
        ));
    }
    fs::remove_dir_all(path).map_err(|e| format!("rm -r {}: {e}", path.display()))?;
    log.push(format!("removed {}", path.display()));
    Ok(())
}

/// Removes everything a crashed test run may have left behind, by name prefix:
/// network namespaces `<prefix>*` (after killing their processes), cgroups
/// `<v2>/sluice-tests/<prefix>*` (after killing their processes), mounts under
/// `/tmp/<prefix>*` and the `/tmp/<prefix>*` directories. Returns one line per
/// removed object (errors are included, prefixed "error:").
///
/// # Panics
/// If `prefix` is shorter than 3 characters or not alphanumeric: a broad
/// prefix would match things the tests did not create.
pub fn cleanup_leftovers(prefix: &str) -> Vec<String> {
    assert!(
        prefix.len() >= 3 && prefix.chars().all(|c| c.is_ascii_alphanumeric()),
        "cleanup prefix must be >= 3 alphanumeric characters, got {prefix:?}"
    );
    let mut log = Vec::new();
    let err = |log: &mut Vec<String>, r: Result<(), String>| {
        if let Err(e) = r {
            log.push(format!("error: {e}"));
        }
    };

    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| n.starts_with(prefix));
    names.sort();
    for ns in names {
        let r = delete_netns(&ns, &mut log);
        err(&mut log, r);
    }

    if let Ok(parent) = cgroup_parent() {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&parent)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        for d in dirs {
            let r = remove_cgroup_tree(&d, &mut log);
            err(&mut log, r);
        }
        // Shared by concurrent runs: only goes when empty.
        if parent.exists() && fs::remove_dir(&parent).is_ok() {
            log.push(format!("removed cgroup {}", parent.display()));
        }
    }

    let mut tmp: Vec<PathBuf> = fs::read_dir("/tmp")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                // Topologies only create directories here; a file with the
                // same prefix is somebody else's.
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    tmp.sort();
    for t in tmp {
        let r = umount_below(&t, &mut log);
        err(&mut log, r);
        let r = remove_tree(&t, &mut log);
        err(&mut log, r);
    }
    log
}

/// A fresh network namespace the calling thread moves into, with its
/// loopback up: every server, client and child process the test starts
/// after this lives there, never in the machine's own namespace. Deleted on
/// drop (declare it first, so it goes last). `None` without root (skipped).
pub struct ThreadNetns(String);

impl ThreadNetns {
    pub fn enter(tag: &str) -> Option<Self> {
        if !crate::require_root() {
            return None;
        }
        use std::os::fd::AsRawFd as _;
        let name = format!("slc-t-{tag}-{}", std::process::id());
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        let ok = |args: &[&str]| std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        assert!(ok(&["netns", "add", &name]), "ip netns add {name}");
        let me = Self(name);
        assert!(ok(&["-n", &me.0, "link", "set", "lo", "up"]), "lo up in {}", me.0);
        let ns = std::fs::File::open(format!("/run/netns/{}", me.0)).expect("opening the test namespace");
        // SAFETY: setns(2) on a valid namespace fd moves only this thread.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns into {}", me.0);
        Some(me)
    }
}

impl ThreadNetns {
    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
