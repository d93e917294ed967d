//! `sluice-cni install`: puts the plugin onto the host, as flannel's
//! install-cni does, from the image's own binary (the image has no shell to
//! run `cp`). Run as the DaemonSet's init container with the host's
//! `/opt/cni/bin` mounted.
//!
//! The plugin file is written beside its final name and renamed into place,
//! so a runtime starting a pod meanwhile runs either the old plugin or the
//! new one, never half a file. The conflist is normally written by
//! `sluice-cni daemon` once the node's routes are up (the node is not
//! reported Ready before); `--conflist` copies an operator's own instead.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source} (is the host directory mounted and writable?)")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a CNI conflist: {reason}")]
    Conflist { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The host's CNI binary directory, as mounted in this container.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// File name of the plugin there (the `type` in the conflist).
    #[arg(long, default_value = "sluice-cni")]
    pub name: String,
    /// A conflist to install too (by default `sluice-cni daemon` writes one
    /// once the node's pod subnet is routed).
    #[arg(long, value_name = "FILE", requires = "conf_dir")]
    pub conflist: Option<PathBuf>,
    /// The host's CNI configuration directory, for `--conflist`.
    #[arg(long, value_name = "DIR")]
    pub conf_dir: Option<PathBuf>,
    /// Install nothing: succeed only if FILE is a conflist naming this
    /// plugin (the daemon container's probe: the daemon writes it once the
    /// node carries pod traffic).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["conflist", "conf_dir"])]
    pub check_conflist: Option<PathBuf>,
}

/// Runs `sluice-cni install` with this executable as the plugin.
///
/// # Errors
/// An unreadable source, an unwritable destination or an invalid conflist;
/// nothing on the host changes then.
pub fn run(args: &Args) -> Result<()> {
    if let Some(path) = &args.check_conflist {
        return check_conflist(path, &args.name);
    }
    // Validate before touching the host: a bad conflist installs nothing.
    let conflist = match &args.conflist {
        Some(path) => {
            let body = read(path)?;
            validate_conflist(path, &body, &args.name)?;
            Some((path, body))
        }
        None => None,
    };
    let self_exe = PathBuf::from("/proc/self/exe");
    let plugin = read(&self_exe)?;
    let dest = args.bin_dir.join(&args.name);
    write_atomic(&dest, &plugin, 0o755)?;
    println!("installed {}", dest.display());
    if let (Some((src, body)), Some(dir)) = (conflist, &args.conf_dir) {
        let name = src.file_name().map_or_else(|| "10-sluice.conflist".into(), std::ffi::OsStr::to_os_string);
        let dest = dir.join(name);
        write_atomic(&dest, &body, 0o644)?;
        println!("installed {}", dest.display());
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })
}

/// Writes `dir/.name.tmp`, syncs it and renames it over `dir/name`.
///
/// # Errors
/// Any failing step; the temporary file is removed then.
pub fn write_atomic(dest: &Path, body: &[u8], mode: u32) -> Result<()> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Write { path: dest.to_owned(), source }
    })
}

fn validate_conflist(path: &Path, body: &[u8], plugin: &str) -> Result<()> {
    let bad = |reason: String| Error::Conflist { path: path.to_owned(), reason };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let plugins = v["plugins"].as_array().ok_or_else(|| bad("no \"plugins\" list".into()))?;
    if v["name"].as_str().is_none_or(str::is_empty) {
        return Err(bad("no network \"name\"".into()));
    }
    if !plugins.iter().any(|p| p["type"] == plugin) {
        return Err(bad(format!("no plugin of type {plugin:?}")));
    }
    Ok(())
}

/// Succeeds when `path` is a valid conflist naming `plugin`.
///
/// # Errors
/// When it is missing or is not such a conflist.
pub fn check_conflist(path: &Path, plugin: &str) -> Result<()> {
    validate_conflist(path, &read(path)?, plugin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-cni-install-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"sluice","plugins":[{"type":"sluice-cni"},{"type":"portmap"}]}"#;

    #[test]
    fn install_copies_the_plugin_executable_and_the_given_conflist() {
        let d = tmpdir("ok");
        let (bin, conf) = (d.join("bin"), d.join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(d.join("10-sluice.conflist"), GOOD).unwrap();
        std::fs::write(bin.join("sluice-cni"), b"old plugin").unwrap();
        let args = Args {
            bin_dir: bin.clone(),
            name: "sluice-cni".into(),
            conflist: Some(d.join("10-sluice.conflist")),
            conf_dir: Some(conf.clone()),
            check_conflist: None,
        };
        run(&args).unwrap();
        let installed = std::fs::read(bin.join("sluice-cni")).unwrap();
        assert_eq!(installed, std::fs::read("/proc/self/exe").unwrap(), "the running executable must be installed");
        let mode = std::fs::metadata(bin.join("sluice-cni")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert_eq!(std::fs::read_to_string(conf.join("10-sluice.conflist")).unwrap(), GOOD);
        let left: Vec<_> = std::fs::read_dir(&bin).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["sluice-cni"], "no temporary file may be left behind");
        check_conflist(&conf.join("10-sluice.conflist"), "sluice-cni").unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_conflist_installs_nothing_and_says_why() {
        let d = tmpdir("bad");
        let (bin, conf) = (d.join("bin"), d.join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        for (body, why) in [
            ("{not json", "invalid JSON"),
            (r#"{"name":"x"}"#, "no \"plugins\" list"),
            (r#"{"name":"x","plugins":[{"type":"bridge"}]}"#, "no plugin of type \"sluice-cni\""),
            (r#"{"plugins":[{"type":"sluice-cni"}]}"#, "no network \"name\""),
        ] {
            std::fs::write(d.join("c.conflist"), body).unwrap();
            let args = Args {
                bin_dir: bin.clone(),
                name: "sluice-cni".into(),
                conflist: Some(d.join("c.conflist")),
                conf_dir: Some(conf.clone()),
                check_conflist: None,
            };
            let err = run(&args).expect_err(body).to_string();
            assert!(err.contains(why), "{body}: expected {why:?} in {err:?}");
            assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 0, "{body}: nothing may be installed");
            assert_eq!(std::fs::read_dir(&conf).unwrap().count(), 0, "{body}: nothing may be installed");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwritable_bin_dir_is_an_error_naming_the_path() {
        let d = tmpdir("missing");
        let args = Args {
            bin_dir: d.join("absent"),
            name: "sluice-cni".into(),
            conflist: None,
            conf_dir: None,
            check_conflist: None,
        };
        let err = run(&args).unwrap_err().to_string();
        assert!(err.contains("absent/sluice-cni") && err.contains("mounted"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_daemons_conflist_passes_the_check() {
        let v = crate::daemon::conflist("sluice", crate::spec::LATEST_VERSION, Path::new("/run/sluice/subnet.json"), Path::new("/var/lib/cni/sluice"));
        validate_conflist(Path::new("daemon"), &serde_json::to_vec(&v).unwrap(), "sluice-cni").unwrap();
    }

    #[test]
    fn check_conflist_fails_while_the_daemon_has_not_written_it() {
        let d = tmpdir("check");
        let path = d.join("10-sluice.conflist");
        assert!(check_conflist(&path, "sluice-cni").is_err());
        std::fs::write(&path, GOOD).unwrap();
        assert!(check_conflist(&path, "sluice-cni").is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
