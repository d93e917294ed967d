//! Running a CNI plugin exactly as a container runtime does, shared by the
//! sluice-cni end-to-end tests and the CNI benchmark: the plugin exec'd
//! directly in the node's network namespace with the CNI environment and
//! its configuration on stdin, and bare pod namespaces (sandboxes).

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// One plugin invocation's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}; stderr: {}", self.stdout, self.stderr))
    }

    pub fn expect_ok(self, what: &str) -> Self {
        assert!(self.ok, "{what}: expected success, got stdout {:?} stderr {}", self.stdout, self.stderr);
        self
    }

    /// Asserts a spec error object with this code.
    pub fn expect_code(&self, code: u64, what: &str) -> Value {
        assert!(!self.ok, "{what}: expected error code {code}, but it succeeded: {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{what}: expected code {code}, got {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: error without msg: {v}");
        assert!(v["cniVersion"].is_string(), "{what}: error without cniVersion: {v}");
        v
    }
}

/// Runs `plugin` (a path) in `node_netns` with the CNI environment and
/// `stdin`, killed after `timeout`. Like a runtime: the plugin is exec'd
/// directly (the child enters the node namespace before exec, no helper
/// process), and its exit is waited for, not polled, so a timing of this
/// call is the plugin's own wall time plus fork/exec.
pub fn invoke(plugin: &Path, node_netns: &str, env: &[(&str, &str)], stdin: &str, timeout: Duration) -> Outcome {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let ns = fs::File::open(format!("/run/netns/{node_netns}")).unwrap_or_else(|e| panic!("open netns {node_netns}: {e}"));
    let ns_fd = ns.as_raw_fd();
    let mut cmd = Command::new(plugin);
    // SAFETY: the closure only calls setns(2) on a descriptor opened above and kept open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", plugin.display()));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let ereader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    drop(ns);
    // A watchdog kills the plugin after `timeout`; the exit itself is waited for.
    let pid = child.id() as libc::pid_t;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            // SAFETY: kill(2) of our own child, which has not been reaped (we hold its wait).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let status = child.wait().unwrap();
    let _ = done_tx.send(());
    assert!(!watchdog.join().unwrap(), "{} did not finish within {timeout:?}", plugin.display());
    Outcome { ok: status.success(), stdout: reader.join().unwrap(), stderr: ereader.join().unwrap() }
}

/// Bare pod namespaces (the runtime's sandbox), deleted on drop.
pub struct PodNetns {
    pub names: Vec<String>,
}

impl Default for PodNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl PodNetns {
    pub fn new() -> Self {
        Self { names: Vec::new() }
    }

    pub fn add(&mut self, name: &str) -> String {
        let out = Command::new("ip").args(["netns", "add", name]).output().unwrap();
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.names.push(name.to_owned());
        let lo = Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]).output().unwrap();
        assert!(lo.status.success());
        name.to_owned()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        for n in self.names.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
}
