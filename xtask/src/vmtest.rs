//! `cargo xtask vm-test`: the privileged end-to-end tests on Debian's 6.1
//! and 6.12 kernels, under qemu.
//!
//! The guest is the host's own root filesystem, read-only over virtio-9p,
//! booted with Debian's kernel and a tiny busybox initramfs:
//!
//! 1. The kernel package is resolved through its metapackage (`apt-cache
//!    depends`: the archive drops old ABIs), fetched with `apt-get download`
//!    and unpacked with `dpkg-deb -x` under `target/vm/<kernel>/` (never
//!    installed on the host; cached). The ELF `vmlinux` is extracted from
//!    `vmlinuz` (qemu boots it through its PVH note, no decompression under
//!    emulation), and `depmod -b` runs where the package ships no
//!    `modules.dep`.
//! 2. The initramfs holds busybox, the 9p modules and `/init`: it mounts the
//!    host's `/` read-only (`cache=loose`), puts proc, sysfs, devtmpfs,
//!    tmpfs (`/tmp`, `/run`), bpffs and cgroup2 over it, points
//!    `/proc/sys/kernel/modprobe` at a wrapper that runs the host's modprobe
//!    on the unpacked module tree, and runs `run.sh` chrooted into it.
//! 3. `run.sh` (written per run into a writable 9p share) runs the host-built
//!    test binaries of the `tests` package with the `SLUICE_*_BIN` variables
//!    `cargo xtask test` sets, one binary after another, and leaves each
//!    one's log and exit code in the share before the guest powers off.
//!
//! The guest has no network device: nothing it does can leave it. qemu runs
//! single-threaded TCG (multi-threaded TCG oopsed now and then; this
//! machine's /dev/kvm cannot boot a stock kernel; `--kvm` where it can). A
//! run whose console shows an Oops is retried once.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::util;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    #[value(name = "debian-6.1")]
    Debian61,
    #[value(name = "debian-6.12")]
    Debian612,
    All,
}

#[derive(clap::Args, Debug)]
pub struct VmTestArgs {
    /// Which guest kernel(s).
    #[arg(long, value_enum, default_value = "debian-6.1")]
    pub kernel: KernelChoice,
    /// Test targets of the `tests` package to run (e.g. `--test proxy_ipvs`); repeatable.
    /// Without --test, --full or a FILTER, the smoke set runs.
    #[arg(long = "test", value_name = "TARGET")]
    pub tests: Vec<String>,
    /// Every privileged test target, every test (slow: hours under emulation).
    #[arg(long, conflicts_with = "tests")]
    pub full: bool,
    /// Threads per test binary inside the guest.
    #[arg(long, default_value_t = 1)]
    pub test_threads: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    pub smp: u32,
    /// Guest memory (qemu's -m syntax).
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// Minutes a guest may run before it is killed (and reported as failed).
    #[arg(long, default_value_t = 40)]
    pub timeout_min: u64,
    /// Use KVM instead of TCG (only where /dev/kvm boots stock kernels; not on PVM hosts).
    #[arg(long)]
    pub kvm: bool,
    /// Arguments for the test binaries: name filters, `--include-ignored`, `--ignored`, `--exact`...
    #[arg(last = true, value_name = "FILTER")]
    pub args: Vec<OsString>,
}

/// A Debian kernel the guests boot.
#[derive(Clone, Copy, Debug)]
struct Kernel {
    name: &'static str,
    /// The metapackage whose dependency names the current ABI.
    meta: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel { name: "debian-6.1", meta: "linux-image-amd64" },
    Kernel { name: "debian-6.12", meta: "linux-image-6.12-amd64" },
];

/// The default smoke set: (test target, exact test names, extra libtest
/// arguments). The scenarios every kernel and dataplane must pass (issue
/// 19, item 4), kept few because the guest is 12-25x slower than the host.
/// The IPVS dataplane's scenarios join here with `&["--include-ignored"]`
/// (they are ignored on the host, whose kernel has no IP_VS).
pub const SMOKE: &[(&str, &[&str], &[&str])] = &[
    (
        "proxy_clusterip",
        &[
            "tcp_and_udp_reach_backends_on_both_nodes_with_a_fair_spread_and_the_vip_shown",
            "a_service_without_endpoints_refuses_at_once",
            "removed_or_unready_endpoints_get_no_new_connections_and_a_deleted_service_stops_translating",
        ],
        &[],
    ),
    (
        "nodeport_external",
        &[
            "nodeport_and_lb_ip_reach_local_and_remote_backends_with_the_right_reply_source",
            "external_traffic_policy_local_keeps_the_client_ip_rejects_elsewhere_and_reports_health",
        ],
        &[],
    ),
    ("proxy_restart", &["new_connections_never_fail_across_sigkill_restart_keep_on_exit_and_cleanup_removes_all"], &[]),
];

/// Test targets that do not need a kernel of their own (pure userspace
/// against a test API server); left out of `--full`.
const HOST_ONLY: &[&str] = &["apiserver"];

/// Binaries the tests find through `SLUICE_*_BIN` (as `cargo xtask test`).
const BINARIES: &[&str] = &["sluice-proxy", "sluice-cni", "sluice-dns", "sluice-probe"];

/// One test binary run inside the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRun {
    pub target: String,
    pub args: Vec<String>,
}

pub fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    util::require_root("cargo xtask vm-test")?;
    crate::setup::run()?;
    for tool in ["qemu-system-x86_64", "busybox", "cpio", "depmod", "dpkg-deb", "apt-get", "xz"] {
        if util::output(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_none() {
            bail!("`{tool}` is missing: run `cargo xtask setup` (it installs qemu-system-x86, busybox-static, cpio, kmod, xz-utils)");
        }
    }
    let kernels: Vec<Kernel> = match args.kernel {
        KernelChoice::Debian61 => vec![KERNELS[0]],
        KernelChoice::Debian612 => vec![KERNELS[1]],
        KernelChoice::All => KERNELS.to_vec(),
    };
    let target_dir = util::target_dir()?;
    let binaries = build(&target_dir)?;
    let extra: Vec<String> = args.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let runs = plan(&args.tests, args.full, &extra, &binaries.tests)?;
    let mut summaries = Vec::new();
    for kernel in kernels {
        let started = Instant::now();
        let guest = prepare_kernel(&target_dir.join("vm").join(kernel.name), kernel)?;
        let outcome = run_guest(&guest, &binaries, &runs, args)?;
        println!("xtask: {}: {} in {:.0?}", kernel.name, outcome.verdict(), started.elapsed());
        summaries.push((kernel.name, outcome, started.elapsed()));
    }
    println!("\nxtask: vm-test summary");
    let mut failed = false;
    for (name, outcome, took) in &summaries {
        println!("  {name} (kernel {}): {} in {:.0?}", outcome.kver, outcome.verdict(), took);
        for f in &outcome.failures {
            println!("    FAILED {f}");
        }
        failed |= !outcome.passed();
    }
    if failed {
        bail!("vm-test failed");
    }
    println!("xtask: all guest tests passed");
    Ok(())
}

/// What the guest needs from the host build.
struct Binaries {
    /// Test target name -> executable.
    tests: BTreeMap<String, PathBuf>,
    /// `SLUICE_*_BIN` variables.
    env: Vec<(String, PathBuf)>,
}

fn build(target_dir: &Path) -> anyhow::Result<Binaries> {
    util::run(util::cargo().args(["build", "--workspace", "--exclude", "proxy-ebpf", "--exclude", "cni-ebpf", "--bins"]))?;
    util::link_cni_static(false)?;
    let debug = target_dir.join("debug");
    let env = BINARIES
        .iter()
        .map(|b| (util::bin_env_var(b), debug.join(b)))
        .filter(|(_, p)| p.is_file())
        .collect();
    println!("xtask: $ cargo test -p tests --no-run --message-format=json");
    let out = util::cargo()
        .args(["test", "-p", "tests", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let tests = test_executables(&String::from_utf8_lossy(&out.stdout));
    if tests.is_empty() {
        bail!("cargo test -p tests --no-run listed no test executables");
    }
    Ok(Binaries { tests, env })
}

/// Test target name -> executable, from cargo's JSON messages (the
/// integration tests of `tests/tests/*.rs`; the library's unit tests need no
/// guest).
pub fn test_executables(json_lines: &str) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for line in json_lines.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let kinds = v["target"]["kind"].as_array().cloned().unwrap_or_default();
        if !kinds.iter().any(|k| k == "test") {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            out.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    out
}

/// Which binaries run with which arguments: the smoke set by default;
/// `--test` targets or every target (`--full`) with the given arguments;
/// only a FILTER: every target with that filter.
pub fn plan(
    targets: &[String],
    full: bool,
    extra: &[String],
    available: &BTreeMap<String, PathBuf>,
) -> anyhow::Result<Vec<GuestRun>> {
    for t in targets {
        if !available.contains_key(t) {
            let known: Vec<&str> = available.keys().map(String::as_str).collect();
            bail!("no test target `{t}` in the tests package (known: {})", known.join(", "));
        }
    }
    let all = || available.keys().filter(|t| !HOST_ONLY.contains(&t.as_str())).cloned().collect::<Vec<_>>();
    let chosen: Vec<String> = if !targets.is_empty() {
        targets.to_vec()
    } else if full || !extra.is_empty() {
        all()
    } else {
        return Ok(SMOKE
            .iter()
            .filter(|(t, _, _)| available.contains_key(*t))
            .map(|(t, names, more)| GuestRun {
                target: (*t).to_string(),
                args: more.iter().map(|s| (*s).to_string()).chain(["--exact".to_string()]).chain(names.iter().map(|s| (*s).to_string())).collect(),
            })
            .collect());
    };
    Ok(chosen.into_iter().map(|target| GuestRun { target, args: extra.to_vec() }).collect())
}

/// A kernel ready to boot.
struct Guest {
    kernel: Kernel,
    dir: PathBuf,
    kver: String,
    vmlinux: PathBuf,
    initramfs: PathBuf,
}

fn prepare_kernel(dir: &Path, kernel: Kernel) -> anyhow::Result<Guest> {
    fs::create_dir_all(dir)?;
    let package = resolve_abi(kernel.meta)?;
    let kver = package.strip_prefix("linux-image-").context("unexpected kernel package name")?.to_string();
    let root = dir.join(format!("root-{kver}"));
    if !root.join("boot").join(format!("vmlinuz-{kver}")).is_file() {
        let deb = download(dir, &package)?;
        let partial = dir.join("root.partial");
        let _ = fs::remove_dir_all(&partial);
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, &root)?;
    }
    let moddir = root.join("lib/modules").join(&kver);
    if !moddir.join("modules.dep").is_file() {
        util::run(Command::new("depmod").arg("-b").arg(&root).arg(&kver))?;
    }
    let vmlinux = dir.join(format!("vmlinux-{kver}"));
    if !vmlinux.is_file() {
        let image = fs::read(root.join("boot").join(format!("vmlinuz-{kver}")))?;
        let elf = extract_vmlinux(&image)?;
        fs::write(dir.join("vmlinux.partial"), elf)?;
        fs::rename(dir.join("vmlinux.partial"), &vmlinux)?;
    }
    let initramfs = dir.join(format!("initramfs-{kver}.cpio"));
    // Rebuilt every run: cheap (a few hundred KiB), and it follows changes to /init.
    build_initramfs(dir, &root, &kver, &initramfs)?;
    Ok(Guest { kernel, dir: dir.to_path_buf(), kver, vmlinux, initramfs })
}

/// `linux-image-amd64` -> `linux-image-6.1.0-NN-amd64`.
fn resolve_abi(meta: &str) -> anyhow::Result<String> {
    let out = util::output(Command::new("apt-cache").args(["depends", meta]))
        .with_context(|| format!("`apt-cache depends {meta}` failed: run `apt-get update`"))?;
    parse_depends(&out).with_context(|| format!("`apt-cache depends {meta}` names no linux-image package: run `apt-get update`"))
}

pub fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
        .map(str::to_string)
}

fn download(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    util::run(Command::new("apt-get").args(["download", package]).current_dir(dir))?;
    find().with_context(|| format!("apt-get download {package} left no .deb in {}", dir.display()))
}

/// The ELF kernel inside a bzImage: its payload is one compressed stream
/// somewhere after the setup code (as scripts/extract-vmlinux finds it).
pub fn extract_vmlinux(image: &[u8]) -> anyhow::Result<Vec<u8>> {
    if image.starts_with(b"\x7fELF") {
        return Ok(image.to_vec());
    }
    let formats: &[(&[u8], &[&str])] = &[
        (b"\xfd7zXZ\x00", &["xz", "-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", &["zstd", "-dcq"]),
        (b"\x1f\x8b\x08", &["gzip", "-dc"]),
        (b"\x02\x21\x4c\x18", &["lz4", "-dc"]),
    ];
    for (magic, cmd) in formats {
        for at in find_all(image, magic) {
            let Ok(mut child) = Command::new(cmd[0])
                .args(&cmd[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            else {
                continue;
            };
            let mut stdin = child.stdin.take().expect("piped");
            let payload = image[at..].to_vec();
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&payload); // trailing data after the stream: the tool stops reading
            });
            let mut out = Vec::new();
            let _ = child.stdout.take().expect("piped").read_to_end(&mut out);
            let _ = child.wait();
            let _ = writer.join();
            if out.starts_with(b"\x7fELF") {
                return Ok(out);
            }
        }
    }
    bail!("no compressed ELF kernel found in the image (looked for xz, zstd, gzip, lz4 streams)")
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len()).enumerate().filter(move |(_, w)| *w == needle).map(|(i, _)| i)
}

/// Modules the initramfs loads before it can mount the host: virtio-pci and
/// the 9p transport and filesystem (modules on Debian's kernels).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Module name -> path relative to the module dir, and its dependencies.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let name = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        stem.replace('-', "_")
    };
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((module, deps)) = line.split_once(':') else { continue };
        let deps: Vec<String> = deps.split_whitespace().map(name).collect();
        out.insert(name(module), (module.trim().to_string(), deps));
    }
    out
}

/// The load order (dependencies first) of `wanted` and what they need;
/// modules missing from modules.dep are built in.
pub fn load_order(deps: &BTreeMap<String, (String, Vec<String>)>, wanted: &[&str]) -> Vec<String> {
    fn visit(m: &str, deps: &BTreeMap<String, (String, Vec<String>)>, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(m.to_string()) {
            return;
        }
        let Some((path, needs)) = deps.get(m) else { return };
        for d in needs {
            visit(d, deps, seen, out);
        }
        out.push(path.clone());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(&w.replace('-', "_"), deps, &mut seen, &mut out);
    }
    out
}

fn build_initramfs(dir: &Path, root: &Path, kver: &str, out: &Path) -> anyhow::Result<()> {
    let stage = dir.join("initramfs");
    let _ = fs::remove_dir_all(&stage);
    for d in ["bin", "sbin", "proc", "sys", "dev", "host", "modules", "tmp"] {
        fs::create_dir_all(stage.join(d))?;
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"].iter().map(PathBuf::from).find(|p| p.is_file()).context("no busybox")?;
    fs::copy(&busybox, stage.join("bin/busybox"))?;
    let moddir = root.join("lib/modules").join(kver);
    let deps = parse_modules_dep(&fs::read_to_string(moddir.join("modules.dep")).context("modules.dep")?);
    let mut order = String::new();
    for rel in load_order(&deps, BOOT_MODULES) {
        let src = moddir.join(&rel);
        let file = Path::new(&rel).file_name().and_then(|n| n.to_str()).context("module file name")?;
        let plain = file.split(".ko").next().unwrap_or(file).to_string() + ".ko";
        let bytes = decompress_module(&src)?;
        fs::write(stage.join("modules").join(&plain), bytes)?;
        writeln!(order, "{plain}")?;
    }
    fs::write(stage.join("modules/order"), order)?;
    write_exec(&stage.join("init"), &init_script())?;
    // The kernel runs this for module autoload (veth, vxlan, ip_vs, ...): the
    // host's modprobe, in the host's root, on the unpacked module tree.
    write_exec(
        &stage.join("sbin/sluice-modprobe"),
        &format!("#!/bin/busybox sh\nexec /bin/busybox chroot /host /sbin/modprobe -d '{}' \"$@\"\n", root.display()),
    )?;
    let list = util::output(Command::new("find").arg(".").current_dir(&stage)).context("listing the initramfs")?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(out)?)
        .spawn()
        .context("running cpio")?;
    child.stdin.take().expect("piped").write_all(list.as_bytes())?;
    if !child.wait()?.success() {
        bail!("cpio failed building {}", out.display());
    }
    Ok(())
}

fn decompress_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: Option<&[&str]> = if name.ends_with(".xz") {
        Some(&["xz", "-dc"])
    } else if name.ends_with(".zst") {
        Some(&["zstd", "-dcq"])
    } else if name.ends_with(".gz") {
        Some(&["gzip", "-dc"])
    } else {
        None
    };
    match tool {
        None => Ok(fs::read(path)?),
        Some(cmd) => {
            let out = Command::new(cmd[0]).args(&cmd[1..]).arg(path).output().with_context(|| format!("{} {name}", cmd[0]))?;
            if !out.status.success() {
                bail!("{} could not decompress {name}", cmd[0]);
            }
            Ok(out.stdout)
        }
    }
}

fn write_exec(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Console markers the host reads back.
const MARK_EXIT: &str = "SLUICE-VM-EXIT";
const MARK_READY: &str = "SLUICE-VM-READY";

fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "sluice-vm: $*"; echo "{MARK_EXIT} 125"; poweroff -f; }}
for m in $(cat /modules/order); do insmod /modules/$m || fail "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 host /host || fail "mounting the host's / over 9p failed"
H=/host
mount -t proc proc $H/proc
mount -t sysfs sysfs $H/sys
mount -t devtmpfs devtmpfs $H/dev
mkdir -p $H/dev/pts $H/dev/shm
mount -t devpts devpts $H/dev/pts
mount -t tmpfs tmpfs $H/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $H/tmp
mount -t tmpfs -o mode=755 tmpfs $H/run
mkdir -p $H/run/netns $H/run/lock
mount -t bpf bpffs $H/sys/fs/bpf
mount -t tmpfs -o mode=755 tmpfs $H/sys/fs/cgroup
mkdir -p $H/sys/fs/cgroup/unified
mount -t cgroup2 cgroup2 $H/sys/fs/cgroup/unified
mount -t tracefs tracefs $H/sys/kernel/tracing 2>/dev/null
mkdir -p $H/tmp/sluice-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out $H/tmp/sluice-vm || fail "mounting the results share failed"
echo /sbin/sluice-modprobe > /proc/sys/kernel/modprobe
ip link set lo up 2>/dev/null
hostname sluice-vm
echo "{MARK_READY} $(uname -r)"
chroot $H /bin/bash /tmp/sluice-vm/run.sh
echo "{MARK_EXIT} $?"
sync
poweroff -f
"#
    )
}

/// The guest's job: every run, log and exit code into the share.
pub fn run_script(workdir: &Path, env: &[(String, PathBuf)], runs: &[(GuestRun, PathBuf)], test_threads: u32) -> String {
    let mut s = String::from("#!/bin/bash\n# Written by cargo xtask vm-test; runs inside the guest.\nset -u\n");
    let _ = writeln!(s, "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp RUST_BACKTRACE=1");
    for (k, v) in env {
        let _ = writeln!(s, "export {k}={}", shell_quote(&v.to_string_lossy()));
    }
    let _ = writeln!(s, "cd {}", shell_quote(&workdir.to_string_lossy()));
    let _ = writeln!(s, "status=0");
    for (run, exe) in runs {
        let name = &run.target;
        let mut cmd = shell_quote(&exe.to_string_lossy());
        let _ = write!(cmd, " --test-threads={test_threads}");
        for a in &run.args {
            cmd.push(' ');
            cmd.push_str(&shell_quote(a));
        }
        let _ = writeln!(s, "echo '=== {name}'");
        let _ = writeln!(s, "{cmd} 2>&1 | tee /tmp/sluice-vm/{name}.log");
        let _ = writeln!(s, "rc=${{PIPESTATUS[0]}}; echo $rc > /tmp/sluice-vm/{name}.rc; [ $rc = 0 ] || status=1");
    }
    let _ = writeln!(s, "sync\nexit $status");
    s
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a guest run produced.
struct Outcome {
    kver: String,
    /// Test target -> exit code (None: the guest never reported it).
    codes: BTreeMap<String, Option<i32>>,
    /// "target::test" of every failed test, and targets that did not finish.
    failures: Vec<String>,
    passed_tests: usize,
    ignored_tests: usize,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.failures.is_empty() && self.codes.values().all(|c| *c == Some(0))
    }

    fn verdict(&self) -> String {
        format!(
            "{}: {} passed, {} failed, {} ignored",
            if self.passed() { "ok" } else { "FAILED" },
            self.passed_tests,
            self.failures.len(),
            self.ignored_tests
        )
    }
}

fn run_guest(guest: &Guest, binaries: &Binaries, runs: &[GuestRun], args: &VmTestArgs) -> anyhow::Result<Outcome> {
    let share = guest.dir.join("share");
    let with_exe: Vec<(GuestRun, PathBuf)> = runs.iter().map(|r| (r.clone(), binaries.tests[&r.target].clone())).collect();
    let script = run_script(&util::workspace_root(), &binaries.env, &with_exe, args.test_threads);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let _ = fs::remove_dir_all(&share);
        fs::create_dir_all(&share)?;
        write_exec(&share.join("run.sh"), &script)?;
        println!("xtask: booting {} (kernel {}), attempt {attempt}: {} test target(s)", guest.kernel.name, guest.kver, runs.len());
        let console = boot(guest, &share, args)?;
        fs::write(guest.dir.join("console.log"), &console)?;
        let oops = ["Oops:", "Kernel panic", "BUG: kernel"].iter().any(|m| console.contains(m));
        let exited = console.lines().any(|l| l.starts_with(MARK_EXIT));
        if oops && attempt == 1 {
            println!("xtask: the guest oopsed (see {}); retrying once", guest.dir.join("console.log").display());
            continue;
        }
        if !exited {
            println!("xtask: the guest did not finish (oops, hang or timeout): see {}", guest.dir.join("console.log").display());
        }
        return Ok(collect(guest, &share, runs));
    }
}

fn collect(guest: &Guest, share: &Path, runs: &[GuestRun]) -> Outcome {
    let mut o = Outcome { kver: guest.kver.clone(), codes: BTreeMap::new(), failures: Vec::new(), passed_tests: 0, ignored_tests: 0 };
    for r in runs {
        let code = fs::read_to_string(share.join(format!("{}.rc", r.target))).ok().and_then(|s| s.trim().parse().ok());
        let log = fs::read_to_string(share.join(format!("{}.log", r.target))).unwrap_or_default();
        let results = parse_libtest(&log);
        for (test, result) in &results {
            match result.as_str() {
                "ok" => o.passed_tests += 1,
                "ignored" => o.ignored_tests += 1,
                _ => o.failures.push(format!("{}::{test}", r.target)),
            }
        }
        if code != Some(0) && !results.iter().any(|(_, res)| res != "ok" && res != "ignored") {
            o.failures.push(format!("{} (exit {}, see its log in {})", r.target, code.map_or("none".into(), |c| c.to_string()), share.display()));
        }
        o.codes.insert(r.target.clone(), code);
    }
    o
}

/// `test NAME ... ok|FAILED|ignored` lines of libtest's output.
pub fn parse_libtest(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, result) = rest.rsplit_once(" ... ")?;
            let result = result.split_whitespace().next()?.trim_end_matches(',');
            matches!(result, "ok" | "FAILED" | "ignored").then(|| (name.to_string(), result.to_string()))
        })
        .collect()
}

fn boot(guest: &Guest, share: &Path, args: &VmTestArgs) -> anyhow::Result<String> {
    let accel = if args.kvm { "kvm" } else { "tcg,thread=single" };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-cpu", "max", "-accel", accel])
        .args(["-smp", &args.smp.to_string(), "-m", &args.memory])
        .args(["-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio", "-nic", "none"])
        .arg("-kernel")
        .arg(&guest.vmlinux)
        .arg("-initrd")
        .arg(&guest.initramfs)
        .args(["-append", "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init"])
        .args(["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"])
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=out,security_model=none", share.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let pid = child.id();
    let deadline = Duration::from_secs(args.timeout_min * 60);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // The watchdog: a guest that hangs is killed at the deadline.
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(deadline).is_err() {
            eprintln!("xtask: the guest ran past {} min: killing qemu", deadline.as_secs() / 60);
            // SAFETY: kill(2) on the qemu child we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let mut console = String::new();
    let started = Instant::now();
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
        if line.starts_with(MARK_READY) {
            println!("xtask: guest up after {:.1?}", started.elapsed());
        }
        println!("  | {line}");
        console.push_str(&line);
        console.push('\n');
    }
    let status = child.wait()?;
    let _ = tx.send(());
    let _ = watchdog.join();
    if !status.success() {
        println!("xtask: qemu exited with {status}");
    }
    Ok(console)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn available(names: &[&str]) -> BTreeMap<String, PathBuf> {
        names.iter().map(|n| ((*n).to_string(), PathBuf::from(format!("/t/{n}")))).collect()
    }

    #[test]
    fn the_abi_package_comes_from_the_metapackage_dependency() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(parse_depends(out).as_deref(), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(parse_depends("linux-image-amd64\n  Depends: <linux-image-6.1.0-1-amd64>\n"), None, "a virtual package is no ABI");
        assert_eq!(parse_depends(""), None);
    }

    #[test]
    fn no_selection_runs_the_smoke_set_with_exact_names() {
        let runs = plan(&[], false, &[], &available(&["proxy_clusterip", "nodeport_external", "proxy_restart", "dns_e2e"])).unwrap();
        assert_eq!(runs.len(), 3, "one run per smoke target present: {runs:?}");
        assert_eq!(runs[0].target, "proxy_clusterip");
        assert_eq!(runs[0].args[0], "--exact");
        assert!(runs.iter().all(|r| r.target != "dns_e2e"), "dns is not in the smoke set");
    }

    #[test]
    fn a_filter_alone_runs_every_guest_target_with_it_and_test_picks_targets() {
        let avail = available(&["apiserver", "proxy_clusterip", "proxy_ipvs"]);
        let filter = vec!["spread".to_string()];
        let runs = plan(&[], false, &filter, &avail).unwrap();
        assert_eq!(runs.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(), ["proxy_clusterip", "proxy_ipvs"], "host-only targets stay out");
        assert!(runs.iter().all(|r| r.args == filter));
        let ignored = vec!["--include-ignored".to_string()];
        let runs = plan(&["proxy_ipvs".to_string()], false, &ignored, &avail).unwrap();
        assert_eq!(runs, vec![GuestRun { target: "proxy_ipvs".into(), args: ignored }]);
        let err = plan(&["nope".to_string()], false, &[], &avail).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("proxy_ipvs"), "the error names the target and the known ones: {err}");
    }

    #[test]
    fn modules_load_dependencies_first_and_once_and_builtins_are_skipped() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz\n\
                   kernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/net/9p/9pnet.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n";
        let deps = parse_modules_dep(dep);
        let order = load_order(&deps, &["virtio_pci", "9pnet_virtio", "9p"]);
        assert_eq!(
            order,
            ["kernel/net/9p/9pnet.ko.xz", "kernel/net/9p/9pnet_virtio.ko.xz", "kernel/fs/netfs/netfs.ko.xz", "kernel/fs/9p/9p.ko.xz"],
            "virtio_pci is built in here (absent from modules.dep)"
        );
    }

    #[test]
    fn libtest_lines_give_each_tests_result() {
        let log = "running 3 tests\ntest a ... ok\ntest b::c ... FAILED\ntest d ... ignored, needs IP_VS\nnoise\n";
        let r = parse_libtest(log);
        let want: Vec<(String, String)> =
            [("a", "ok"), ("b::c", "FAILED"), ("d", "ignored")].iter().map(|(a, b)| ((*a).to_string(), (*b).to_string())).collect();
        assert_eq!(r, want);
    }

    #[test]
    fn the_run_script_exports_binaries_and_quotes_arguments() {
        let runs = vec![(GuestRun { target: "proxy_ipvs".into(), args: vec!["--include-ignored".into(), "it's".into()] }, PathBuf::from("/w/target/debug/deps/proxy_ipvs-1"))];
        let s = run_script(Path::new("/w"), &[("SLUICE_PROXY_BIN".into(), PathBuf::from("/w/target/debug/sluice-proxy"))], &runs, 1);
        assert!(s.contains("export SLUICE_PROXY_BIN=/w/target/debug/sluice-proxy"), "{s}");
        assert!(s.contains("/w/target/debug/deps/proxy_ipvs-1 --test-threads=1 --include-ignored 'it'\\''s' 2>&1 | tee /tmp/sluice-vm/proxy_ipvs.log"), "{s}");
        assert!(s.contains("/tmp/sluice-vm/proxy_ipvs.rc"), "{s}");
    }

    #[test]
    fn an_elf_image_is_returned_as_is_and_garbage_is_refused() {
        assert_eq!(extract_vmlinux(b"\x7fELFrest").unwrap(), b"\x7fELFrest");
        assert!(extract_vmlinux(b"MZ not a kernel").is_err());
    }
}
