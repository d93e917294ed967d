//! Processes started inside a test network namespace (and cgroup), with their
//! output captured and their lifetime bounded by the handle or the topology.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(10);
/// How long to wait for the output pipes to reach EOF once the process exited
/// (a grandchild that inherited them could keep them open forever).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// A process spawned by the harness. Killed (SIGKILL to its process group)
/// and reaped when the handle is dropped, or when the owning topology is.
///
/// stdin is `/dev/null`; stdout and stderr are captured in memory and can be
/// read at any time.
pub struct Proc {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pid: u32,
    label: String,
    state: Mutex<State>,
    stdout: Stream,
    stderr: Stream,
}

struct State {
    child: Child,
    status: Option<ExitStatus>,
}

#[derive(Clone)]
struct Stream {
    buf: Arc<Mutex<Vec<u8>>>,
    eof: Arc<AtomicBool>,
}

impl Stream {
    fn new() -> Self {
        Stream {
            buf: Arc::new(Mutex::new(Vec::new())),
            eof: Arc::new(AtomicBool::new(false)),
        }
    }

    fn drain_from(&self, mut pipe: impl Read + Send + 'static) {
        let s = self.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => lock(&s.buf).extend_from_slice(&chunk[..n]),
                }
            }
            s.eof.store(true, Ordering::Release);
        });
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.buf)).into_owned()
    }

    fn bytes(&self) -> Vec<u8> {
        lock(&self.buf).clone()
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Spawns `cmd` with its pid first written to `cgroup/cgroup.procs` and then
/// switched into the network namespace `/run/netns/<netns>` (only the network
/// namespace: `ip netns exec` would also remount /sys and hide cgroup and
/// bpffs mounts).
pub(crate) fn spawn(
    mut cmd: Command,
    netns: Option<&str>,
    cgroup: Option<&Path>,
) -> io::Result<Proc> {
    let label = format!("{:?}", cmd.get_program())
        .trim_matches('"')
        .to_string();
    let label = match netns {
        Some(ns) => format!("{label} in {ns}"),
        None => label,
    };
    // Opened here, not in the child: between fork and exec only
    // async-signal-safe calls are allowed (no allocation, no path building).
    let ns_file = netns
        .map(|ns| File::open(format!("/run/netns/{ns}")))
        .transpose()
        .map_err(|e| io::Error::new(e.kind(), format!("open netns {netns:?}: {e}")))?;
    let cg_file = cgroup
        .map(|cg| OpenOptions::new().write(true).open(cg.join("cgroup.procs")))
        .transpose()
        .map_err(|e| io::Error::new(e.kind(), format!("open cgroup.procs in {cgroup:?}: {e}")))?;
    let ns_fd = ns_file.as_ref().map(AsRawFd::as_raw_fd);
    let cg_fd = cg_file.as_ref().map(AsRawFd::as_raw_fd);

    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Own process group, so killing the group also takes helpers it forked.
    cmd.process_group(0);
    // SAFETY: the closure only calls write(2) and setns(2) on descriptors opened
    // above, both async-signal-safe, and builds io::Error from errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = cg_fd {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("spawn {label}: {e}")))?;
    drop((ns_file, cg_file));

    let stdout = Stream::new();
    let stderr = Stream::new();
    if let Some(p) = child.stdout.take() {
        stdout.drain_from(p);
    }
    if let Some(p) = child.stderr.take() {
        stderr.drain_from(p);
    }
    Ok(Proc {
        shared: Arc::new(Shared {
            pid: child.id(),
            label,
            state: Mutex::new(State {
                child,
                status: None,
            }),
            stdout,
            stderr,
        }),
    })
}

impl Shared {
    fn try_wait(&self) -> Option<ExitStatus> {
        let mut st = lock(&self.state);
        if st.status.is_none() {
            st.status = st.child.try_wait().ok().flatten();
        }
        st.status
    }

    pub(crate) fn kill(&self) -> Option<ExitStatus> {
        let mut st = lock(&self.state);
        if st.status.is_some() {
            return st.status;
        }
        // The group is signalled before the leader is reaped, so its id cannot
        // have been reused yet.
        let pgid = i32::try_from(self.pid).unwrap_or(0);
        if pgid > 0 {
            // SAFETY: plain kill(2) on our own child's process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = st.child.kill();
        st.status = st.child.wait().ok();
        st.status
    }

    fn wait_pipes(&self, deadline: Instant) {
        while !(self.stdout.eof.load(Ordering::Acquire) && self.stderr.eof.load(Ordering::Acquire))
            && Instant::now() < deadline
        {
            thread::sleep(POLL);
        }
    }

    /// The tail of the captured output, for the log printed at teardown.
    pub(crate) fn summary(&self) -> String {
        let tail = |s: &Stream| {
            let t = s.text();
            let start = t.len().saturating_sub(4000);
            let start = (start..t.len())
                .find(|&i| t.is_char_boundary(i))
                .unwrap_or(t.len());
            t[start..].to_string()
        };
        format!(
            "--- {} (pid {}) status {:?}\n--- stdout (tail):\n{}\n--- stderr (tail):\n{}",
            self.label,
            self.pid,
            lock(&self.state).status,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// Exit status if the process has exited (reaps it), without blocking.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.shared.try_wait()
    }

    /// Waits up to `timeout` for the process to exit; `None` if still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.shared.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process if it is still running.
    pub fn signal(&self, signal: i32) {
        let st = lock(&self.shared.state);
        if st.status.is_none() {
            if let Ok(pid) = i32::try_from(self.shared.pid) {
                // SAFETY: kill(2) on our own unreaped child (its pid cannot be reused).
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// SIGKILLs the process group and reaps the process.
    pub fn kill(&self) -> Option<ExitStatus> {
        self.shared.kill()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.shared.stdout.text()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.shared.stderr.text()
    }

    /// Waits until stdout contains `needle`; false on timeout or if the process
    /// exited without printing it.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for(needle, timeout, false)
    }

    /// Waits until stderr contains `needle` (e.g. a log line).
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for(needle, timeout, true)
    }

    fn wait_for(&self, needle: &str, timeout: Duration, stderr: bool) -> bool {
        let stream = if stderr {
            &self.shared.stderr
        } else {
            &self.shared.stdout
        };
        let deadline = Instant::now() + timeout;
        loop {
            if stream.text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if self.shared.try_wait().is_some() {
                self.shared.wait_pipes(Instant::now() + PIPE_GRACE);
                return stream.text().contains(needle);
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for exit, killing the process on timeout, and
    /// returns its status and complete output.
    pub fn wait_output(&self, timeout: Duration) -> Output {
        let status = match self.wait_timeout(timeout) {
            Some(s) => s,
            None => self
                .kill()
                .unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
        };
        self.shared.wait_pipes(Instant::now() + PIPE_GRACE);
        Output {
            status,
            stdout: self.shared.stdout.bytes(),
            stderr: self.shared.stderr.bytes(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.shared.kill();
    }
}
