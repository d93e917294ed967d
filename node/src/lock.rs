//! One daemon per pin directory. Two agents writing the same pinned maps
//! would undo each other's work, so a daemon holds an exclusive `flock(2)`
//! on its pin directory for as long as it runs, and a second one refuses to
//! start. The lock is on the directory itself because bpffs holds no
//! regular files (creating a lock file there fails with EPERM), and a lock
//! under /run would not be seen by an agent in another container: the
//! directory's inode is shared by every mount of the same bpffs. The kernel
//! drops the lock when the holder exits, also on SIGKILL, so a crash leaves
//! nothing stale behind.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "another {what} already uses {dir}{holder}: two agents writing the same pinned maps would undo each \
         other's work. Stop the other one first, or give this one its own directory (--bpffs)",
        holder = holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held { what: String, dir: PathBuf, holder: Option<u32> },
    #[error("locking {dir}: {cause}")]
    Io { dir: PathBuf, cause: io::Error },
}

/// An exclusive lock on a directory, released on drop (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock without waiting; `what` names the daemon in the error
    /// (e.g. "sluice-proxy").
    ///
    /// # Errors
    /// [`Error::Held`] when another process holds it (with its pid when
    /// `/proc/locks` shows it), [`Error::Io`] when `dir` cannot be opened.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self, Error> {
        let io_err = |cause| Error::Io { dir: dir.to_owned(), cause };
        let file = File::open(dir).map_err(io_err)?;
        // SAFETY: flock(2) on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = file.metadata().ok().and_then(|m| {
                    let locks = std::fs::read_to_string("/proc/locks").ok()?;
                    flock_holder(&locks, m.ino())
                });
                return Err(Error::Held { what: what.to_owned(), dir: dir.to_owned(), holder });
            }
            return Err(io_err(e));
        }
        Ok(Self { _dir: file, path: dir.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid holding a FLOCK on inode `ino`, from the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF`).
fn flock_holder(locks: &str, ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts with "1: ->": skip those.
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let inode = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        (inode == ino).then(|| f.get(4)?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-lock-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_and_names_the_holder() {
        let dir = scratch("second");
        let first = DirLock::acquire(&dir, "sluice-proxy").unwrap();
        let err = DirLock::acquire(&dir, "sluice-proxy").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Held { .. }), "{text}");
        assert!(text.starts_with(&format!("another sluice-proxy already uses {}", dir.display())), "{text}");
        assert!(text.contains(&format!("(pid {})", std::process::id())), "the holder's pid: {text}");
        drop(first);
        let again = DirLock::acquire(&dir, "sluice-proxy");
        assert!(again.is_ok(), "released on drop: {again:?}");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_it() {
        let err = DirLock::acquire(Path::new("/nonexistent/sluice"), "x").unwrap_err();
        assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("/nonexistent/sluice"), "{err}");
    }

    #[test]
    fn proc_locks_lines_name_the_holder() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 00:2a:77 0 EOF\n1: -> FLOCK  ADVISORY  WRITE 5 00:2a:77 0 EOF\n2: POSIX  ADVISORY  WRITE 9 00:2a:78 0 EOF\n";
        assert_eq!(flock_holder(text, 77), Some(4242));
        assert_eq!(flock_holder(text, 78), None, "POSIX locks are someone else's");
        assert_eq!(flock_holder(text, 1), None);
        assert_eq!(flock_holder("garbage\n\n1:", 77), None);
    }
}
