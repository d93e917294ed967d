//! Built-in IPAM: addresses from the node's pod ranges, kept in one JSON file
//! per network under an exclusive `flock`.
//!
//! Crash safety: every change is written to a spare file that is then
//! atomically exchanged with (or, where that is unsupported, renamed over)
//! the store, so a plugin killed at any point leaves either the old or the
//! new store, never a torn one; the lock is a `flock` on a separate file,
//! which the kernel releases when its holder dies. An address allocated by an ADD that
//! died before the runtime learnt of it is reclaimed by DEL (the runtime calls
//! it after a failed ADD) or by GC.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::spec::{Attachment, Code, Error, Result};

/// How long an ADD waits for the store lock before answering "try again later".
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// The store's file format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Last address handed out per range: allocation continues after it, so a
    /// freed address is not immediately reused (stale conntrack, ARP).
    #[serde(default)]
    pub last: BTreeMap<IpNetwork, IpAddr>,
    #[serde(default)]
    pub allocations: BTreeMap<IpAddr, Attachment>,
}

impl State {
    /// Addresses held by one attachment.
    pub fn owned_by(&self, owner: &Attachment) -> Vec<IpAddr> {
        self.allocations.iter().filter(|(_, o)| *o == owner).map(|(ip, _)| *ip).collect()
    }

    /// One address from every range for `owner` (the ones it already holds
    /// when it holds some: a retried ADD gets the same addresses).
    pub fn allocate(&mut self, ranges: &[IpNetwork], owner: &Attachment) -> Result<Vec<IpNetwork>> {
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            if let Some(ip) = self.owned_by(owner).into_iter().find(|ip| range.contains(*ip)) {
                out.push(IpNetwork::new(ip, range.prefix()).expect("prefix from a valid network"));
                continue;
            }
            let ip = self.next_free(range).ok_or_else(|| {
                Error::new(Code::RangeExhausted, "no free address", format!("every address of {range} is allocated"))
            })?;
            self.allocations.insert(ip, owner.clone());
            self.last.insert(*range, ip);
            out.push(IpNetwork::new(ip, range.prefix()).expect("prefix from a valid network"));
        }
        Ok(out)
    }

    /// The first free host address after the last one handed out, wrapping.
    /// Walks at most (allocations in the range + 2) candidates, so a /64 costs
    /// no more than a /24.
    fn next_free(&self, range: &IpNetwork) -> Option<IpAddr> {
        let (first, last) = host_bounds(range)?;
        let start = self.last.get(range).map_or(first, |l| {
            let l = to_u128(*l);
            if l >= first && l < last {
                l + 1
            } else {
                first
            }
        });
        let used = self.allocations.keys().filter(|ip| range.contains(**ip)).count() as u128;
        let size = last - first + 1;
        let mut cand = start;
        for _ in 0..size.min(used + 2) {
            let ip = from_u128(cand, range.is_ipv4());
            if !self.allocations.contains_key(&ip) {
                return Some(ip);
            }
            cand = if cand >= last { first } else { cand + 1 };
        }
        None
    }

    /// Frees the addresses of one attachment; returns them.
    pub fn release(&mut self, owner: &Attachment) -> Vec<IpAddr> {
        let ips = self.owned_by(owner);
        for ip in &ips {
            self.allocations.remove(ip);
        }
        ips
    }

    /// Frees those of `ips` that `owner` holds (what one failed ADD allocated);
    /// returns them. Addresses held by anyone else stay.
    pub fn release_addrs(&mut self, owner: &Attachment, ips: &[IpAddr]) -> Vec<IpAddr> {
        let mine: Vec<IpAddr> = ips.iter().copied().filter(|ip| self.allocations.get(ip) == Some(owner)).collect();
        for ip in &mine {
            self.allocations.remove(ip);
        }
        mine
    }

    /// Frees every address whose attachment is not in `valid`; returns them.
    pub fn gc(&mut self, valid: &[Attachment]) -> Vec<IpAddr> {
        let stale: Vec<IpAddr> =
            self.allocations.iter().filter(|(_, o)| !valid.contains(o)).map(|(ip, _)| *ip).collect();
        for ip in &stale {
            self.allocations.remove(ip);
        }
        stale
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(u32::try_from(v).unwrap_or(0).into())
    } else {
        IpAddr::V6(v.into())
    }
}

/// First and last assignable host of a range: never the network address (the
/// node's VXLAN device uses it) nor the IPv4 broadcast; `None` when the range
/// has no host left (a /31, /32, /127, /128).
fn host_bounds(range: &IpNetwork) -> Option<(u128, u128)> {
    let bits = if range.is_ipv4() { 32 } else { 128 };
    let host_bits = bits - u32::from(range.prefix());
    if host_bits < 2 {
        return None;
    }
    let net = to_u128(range.network());
    let span = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    let last = if range.is_ipv4() { net + span - 1 } else { net + span };
    Some((net + 1, last))
}

/// The on-disk store of one network: `<data_dir>/<network>/{lock,state.json}`.
pub struct Store {
    dir: PathBuf,
}

/// Held while one attachment is added or deleted; dropping it (or the
/// process dying) unlocks. See [`Store::lock_attachment`].
#[derive(Debug)]
pub struct AttachmentLock {
    _file: File,
}

/// Held while the store is read and written; dropping it unlocks.
pub struct Locked<'a> {
    store: &'a Store,
    _lock: File,
    pub state: State,
}

fn io_err(what: &str, path: &Path, e: &io::Error) -> Error {
    Error::new(Code::Io, format!("ipam store: {what}"), format!("{}: {e}", path.display()))
}

impl Store {
    pub fn new(data_dir: impl AsRef<Path>, network: &str) -> Self {
        // The network name becomes a directory: keep it one safe component.
        let safe: String =
            network.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        let safe = if safe.is_empty() || safe.starts_with('.') { format!("_{safe}") } else { safe };
        Self { dir: data_dir.as_ref().join(safe) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn spare_path(&self) -> PathBuf {
        self.dir.join("state.json.tmp")
    }

    /// Takes the exclusive lock (bounded wait) and reads the state.
    pub fn lock(&self) -> Result<Locked<'_>> {
        let lock_path = self.dir.join("lock");
        let lock = self.open_lock_file(&lock_path)?;
        flock(&lock, &lock_path, libc::LOCK_EX)?;
        let state = self.read()?;
        Ok(Locked { store: self, _lock: lock, state })
    }

    /// Serialises the commands of one attachment (container id, ifname): an
    /// exclusive open-file-description lock on one byte of the store's lock
    /// file, at an offset hashed from the attachment. A runtime retrying or
    /// racing a duplicate ADD, or a DEL racing an ADD, then waits for the
    /// first to finish instead of undoing what it did. These locks do not
    /// interact with the whole-store `flock` on the same file (Linux keeps
    /// the two kinds apart), and need no file per attachment, so nothing is
    /// left to clean up. `create`: make the directory and lock file when
    /// missing (ADD); without it a missing lock file is `Ok(None)` (DEL on a
    /// network that never had an attachment here).
    pub fn lock_attachment(&self, owner: &Attachment, create: bool) -> Result<Option<AttachmentLock>> {
        let lock_path = self.dir.join("lock");
        let file = if create {
            self.open_lock_file(&lock_path)?
        } else {
            match OpenOptions::new().write(true).open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("open lock", &lock_path, &e)),
            }
        };
        let offset = attachment_offset(owner);
        retry_lock(&lock_path, || {
            // SAFETY: an all-zero flock struct is valid; the fields are set below.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = offset;
            fl.l_len = 1;
            // SAFETY: fcntl(2) F_OFD_SETLK on an fd we own with a valid flock struct.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) == 0 }
        })?;
        Ok(Some(AttachmentLock { _file: file }))
    }

    fn open_lock_file(&self, lock_path: &Path) -> Result<File> {
        let open = || OpenOptions::new().create(true).truncate(false).write(true).open(lock_path);
        match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir).map_err(|e| io_err("create directory", &self.dir, &e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| io_err("open lock", lock_path, &e))
    }

    /// Reads the state under a shared lock (for CHECK and diagnostics): a
    /// commit rewrites the previous store file in place (see
    /// [`Locked::commit`]), so a reader must not hold it open across one.
    pub fn peek(&self) -> Result<State> {
        let lock_path = self.dir.join("lock");
        let lock = match File::open(&lock_path) {
            Ok(f) => f,
            // No writer ever locked here (nothing allocated, or a store
            // placed by hand): nothing can be rewriting it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.read(),
            Err(e) => return Err(io_err("open lock", &lock_path, &e)),
        };
        flock(&lock, &lock_path, libc::LOCK_SH)?;
        self.read()
    }

    fn read(&self) -> Result<State> {
        let path = self.state_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(io_err("read", &path, &e)),
        };
        serde_json::from_slice(&bytes).or_else(|e| {
            // Without fsync, a power loss can leave the last store written
            // torn or empty; but then every pod it listed died with the
            // machine. A store older than this boot that does not parse is
            // therefore dropped; one written since is an error.
            if written_before_boot(&path) {
                tracing::warn!(path = %path.display(), error = %e, "ipam store from before this boot is unreadable; starting empty");
                Ok(State::default())
            } else {
                Err(Error::new(Code::Decode, "ipam store is corrupt", format!("{}: {e}", path.display())))
            }
        })
    }
}

/// The byte of the lock file that stands for one attachment (FNV-1a of
/// container id and ifname, kept to a positive `off_t`).
fn attachment_offset(owner: &Attachment) -> libc::off_t {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner.container_id.bytes().chain([0]).chain(owner.ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    libc::off_t::try_from(h >> 2).unwrap_or(0)
}

/// `flock(2)` with a bounded wait; "try again later" when it runs out.
fn flock(file: &File, path: &Path, how: libc::c_int) -> Result<()> {
    // SAFETY: flock(2) on an fd we own.
    retry_lock(path, || unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0)
}

/// Retries a non-blocking lock attempt with a short backoff until it
/// succeeds or [`LOCK_TIMEOUT`] passes ("try again later").
fn retry_lock(path: &Path, mut attempt: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut pause = Duration::from_micros(50);
    loop {
        if attempt() {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        let busy = matches!(e.raw_os_error(), Some(libc::EWOULDBLOCK | libc::EACCES));
        if !busy && e.kind() != io::ErrorKind::Interrupted {
            return Err(io_err("lock", path, &e));
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                Code::TryAgainLater,
                "ipam store is busy",
                format!("{} stayed locked for {LOCK_TIMEOUT:?}", path.display()),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Whether `path` was last modified before the machine booted.
fn written_before_boot(path: &Path) -> bool {
    let Ok(modified) = fs::metadata(path).and_then(|m| m.modified()) else { return false };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes into the timespec we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return false;
    }
    let up = Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0));
    std::time::SystemTime::now().checked_sub(up).is_some_and(|boot| modified < boot)
}

impl Locked<'_> {
    /// Writes the state back so that readers and a crash at any point only
    /// ever see a whole store: the new state goes into the spare file, which
    /// is then atomically exchanged with `state.json` (renameat2
    /// RENAME_EXCHANGE). The spare is the previous store, rewritten in place:
    /// unlike a fresh temporary file renamed over the store, this allocates
    /// and frees no blocks and does not make ext4 start writeback on the
    /// rename (its `auto_da_alloc` replace-via-rename heuristic), which took
    /// the commit from ~150 us to ~15 us per ADD here. Where exchange is not
    /// supported (or there is no store yet) it falls back to a plain rename.
    pub fn commit(&self) -> Result<()> {
        let path = self.store.state_path();
        let spare = self.store.spare_path();
        let bytes = serde_json::to_vec(&self.state).expect("state serialises");
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().create(true).truncate(false).write(true).open(&spare)?;
            let old_len = f.metadata()?.len();
            f.write_all(&bytes)?;
            // Only when the state shrank (and never to length 0, after
            // which ext4 would flush at close).
            if old_len > bytes.len() as u64 {
                f.set_len(bytes.len() as u64)?;
            }
            drop(f);
            match exchange(&spare, &path) {
                Ok(()) => Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                    ) =>
                {
                    fs::rename(&spare, &path)
                }
                Err(e) => Err(e),
            }
        };
        write().map_err(|e| io_err("write", &path, &e))
    }
}

/// Atomically swaps two paths (renameat2 with RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths relative to the current directory (or absolute).
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn att(id: &str) -> Attachment {
        Attachment { container_id: id.into(), ifname: "eth0".into() }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_hosts_only_skipping_network_and_broadcast() {
        let mut s = State::default();
        let r = [net("198.18.1.0/30")];
        let a = s.allocate(&r, &att("a")).unwrap();
        let b = s.allocate(&r, &att("b")).unwrap();
        assert_eq!(a[0], net("198.18.1.1/30"));
        assert_eq!(b[0], net("198.18.1.2/30"));
        let e = s.allocate(&r, &att("c")).unwrap_err();
        assert_eq!(e.code, Code::RangeExhausted as u32, "a /30 holds two pods, saw {e:?}");
    }

    #[test]
    fn repeated_allocation_for_the_same_attachment_returns_the_same_address() {
        let mut s = State::default();
        let r = [net("198.18.1.0/24")];
        assert_eq!(s.allocate(&r, &att("a")).unwrap(), s.allocate(&r, &att("a")).unwrap());
        assert_eq!(s.allocations.len(), 1);
    }

    #[test]
    fn dual_stack_gets_one_address_per_range() {
        let mut s = State::default();
        let got = s.allocate(&[net("198.18.1.0/24"), net("2001:db8:1:1::/64")], &att("a")).unwrap();
        assert_eq!(got, vec![net("198.18.1.1/24"), net("2001:db8:1:1::1/64")]);
    }

    #[test]
    fn freed_address_is_not_reused_at_once_but_wraps_around() {
        let mut s = State::default();
        let r = [net("198.18.1.0/29")]; // hosts .1 - .6
        for i in 0..6 {
            s.allocate(&r, &att(&format!("c{i}"))).unwrap();
        }
        assert_eq!(s.release(&att("c1")), vec!["198.18.1.2".parse::<IpAddr>().unwrap()]);
        let got = s.allocate(&r, &att("new")).unwrap();
        assert_eq!(got[0], net("198.18.1.2/29"), "the only free address, found by wrapping");
        s.release(&att("c3"));
        s.release(&att("c4"));
        // last handed out is .2: the next is .4, not .5
        assert_eq!(s.allocate(&r, &att("n2")).unwrap()[0], net("198.18.1.4/29"));
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let mut s = State::default();
        let r = [net("198.18.1.0/24")];
        for id in ["a", "b", "c"] {
            s.allocate(&r, &att(id)).unwrap();
        }
        let freed = s.gc(&[att("b")]);
        assert_eq!(freed.len(), 2);
        assert_eq!(s.allocations.values().cloned().collect::<Vec<_>>(), vec![att("b")]);
    }

    #[test]
    fn gc_distinguishes_interfaces_of_one_container() {
        let mut s = State::default();
        let r = [net("198.18.1.0/24")];
        s.allocate(&r, &att("a")).unwrap();
        let net1 = Attachment { container_id: "a".into(), ifname: "net1".into() };
        s.allocate(&r, &net1).unwrap();
        assert_eq!(s.gc(&[att("a")]).len(), 1);
        assert_eq!(s.owned_by(&net1).len(), 0);
    }

    #[test]
    fn ranges_without_hosts_are_exhausted() {
        let mut s = State::default();
        assert!(s.allocate(&[net("198.18.1.1/32")], &att("a")).is_err());
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-cni-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn store_survives_reopen_and_release() {
        let d = tempdir("reopen");
        let store = Store::new(&d, "pods");
        {
            let mut l = store.lock().unwrap();
            l.state.allocate(&[net("198.18.1.0/24")], &att("a")).unwrap();
            l.commit().unwrap();
        }
        // A fresh Store, as the next plugin process sees it.
        let store = Store::new(&d, "pods");
        assert_eq!(store.peek().unwrap().owned_by(&att("a")), vec!["198.18.1.1".parse::<IpAddr>().unwrap()]);
        let mut l = store.lock().unwrap();
        l.state.release(&att("a"));
        l.commit().unwrap();
        drop(l);
        assert!(store.peek().unwrap().allocations.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn uncommitted_changes_are_not_visible() {
        let d = tempdir("uncommitted");
        let store = Store::new(&d, "pods");
        {
            let mut l = store.lock().unwrap();
            l.state.allocate(&[net("198.18.1.0/24")], &att("a")).unwrap();
            // dropped without commit: what a crash before the rename leaves
        }
        assert!(store.peek().unwrap().allocations.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_commit_leaves_a_whole_store_and_a_torn_spare_does_not_matter() {
        let d = tempdir("commits");
        let store = Store::new(&d, "pods");
        for id in ["a", "b", "c"] {
            let mut l = store.lock().unwrap();
            l.state.allocate(&[net("198.18.1.0/24")], &att(id)).unwrap();
            l.commit().unwrap();
        }
        assert_eq!(store.peek().unwrap().allocations.len(), 3);
        // A plugin killed while writing the spare leaves it torn; the store is untouched.
        fs::write(store.dir().join("state.json.tmp"), b"{\"last\":{\"198.18").unwrap();
        assert_eq!(store.peek().unwrap().allocations.len(), 3);
        let mut l = store.lock().unwrap();
        l.state.release(&att("b"));
        l.commit().unwrap();
        drop(l);
        let s = store.peek().unwrap();
        assert_eq!((s.allocations.len(), s.owned_by(&att("b")).len()), (2, 0));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unreadable_store_is_dropped_only_if_it_predates_this_boot() {
        let d = tempdir("corrupt");
        let store = Store::new(&d, "pods");
        fs::create_dir_all(store.dir()).unwrap();
        let path = store.dir().join("state.json");
        fs::write(&path, [0u8; 64]).unwrap();
        let e = store.peek().unwrap_err();
        assert_eq!(e.code, Code::Decode as u32, "a store torn during this boot is an error: {e:?}");
        // What a power loss leaves: written before the machine (re)started.
        let long_ago = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options().write(true).open(&path).unwrap().set_modified(long_ago).unwrap();
        assert!(store.peek().unwrap().allocations.is_empty());
        let mut l = store.lock().unwrap();
        assert_eq!(l.state.allocate(&[net("198.18.1.0/24")], &att("a")).unwrap()[0].ip().to_string(), "198.18.1.1");
        l.commit().unwrap();
        drop(l);
        assert_eq!(store.peek().unwrap().allocations.len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_add_releases_only_the_addresses_it_allocated() {
        let mut s = State::default();
        let r = [net("198.18.1.0/24")];
        let held = s.allocate(&r, &att("a")).unwrap()[0].ip();
        let other = s.allocate(&r, &att("b")).unwrap()[0].ip();
        // "a" failed after allocating nothing new: its held address stays,
        // and nobody else's can be released in its name.
        assert!(s.release_addrs(&att("a"), &[other]).is_empty());
        assert!(s.release_addrs(&att("a"), &[]).is_empty());
        assert_eq!(s.owned_by(&att("a")), vec![held]);
        assert_eq!(s.release_addrs(&att("a"), &[held]), vec![held]);
        assert_eq!(s.owned_by(&att("b")), vec![other]);
    }

    #[test]
    fn attachment_locks_exclude_the_same_attachment_only() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let d = tempdir("attach-lock");
        let store = Store::new(&d, "pods");
        assert!(store.lock_attachment(&att("a"), false).unwrap().is_none(), "no lock file yet: nothing to wait for");
        let held = store.lock_attachment(&att("a"), true).unwrap().expect("created");
        // Another attachment is not held up, nor is the whole-store lock.
        let other = store.lock_attachment(&att("b"), false).unwrap().expect("lock file exists");
        drop(store.lock().unwrap());
        drop(other);
        let released = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (d, released) = (d.clone(), Arc::clone(&released));
            std::thread::spawn(move || {
                let l = Store::new(&d, "pods").lock_attachment(&att("a"), false).unwrap().expect("exists");
                assert!(released.load(Ordering::SeqCst), "the same attachment was locked twice at once");
                drop(l);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        released.store(true, Ordering::SeqCst);
        drop(held);
        waiter.join().unwrap();
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn network_name_cannot_escape_the_data_dir() {
        let store = Store::new("/var/lib/x", "../../etc");
        assert!(store.dir().starts_with("/var/lib/x"), "{}", store.dir().display());
        assert_eq!(store.dir().components().count(), Path::new("/var/lib/x").components().count() + 1);
    }

    #[test]
    fn concurrent_allocations_from_many_threads_never_collide() {
        // flock locks belong to the open file description, so threads opening
        // the lock file separately exclude each other as processes do.
        let d = tempdir("concurrent");
        let n = 64;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let d = d.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let store = Store::new(&d, "pods");
                    barrier.wait();
                    let mut l = store.lock().unwrap();
                    let ip = l.state.allocate(&[net("198.18.1.0/24")], &att(&format!("c{i}"))).unwrap();
                    l.commit().unwrap();
                    ip[0].ip()
                })
            })
            .collect();
        let mut ips: Vec<IpAddr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), n, "every allocation must be distinct");
        assert_eq!(Store::new(&d, "pods").peek().unwrap().allocations.len(), n);
        fs::remove_dir_all(&d).unwrap();
    }
}
