//! The agent's config file: YAML whose keys are the flags of `run` in
//! camelCase. It is turned into flags placed before the command line's own,
//! so a flag given on the command line always wins (clap keeps the last
//! occurrence) and the file accepts exactly what the flags accept.

use std::{ffi::OsString, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// `metricsAddr` -> `--metrics-addr`.
fn flag_name(key: &str) -> String {
    let mut out = String::from("--");
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else if c == '_' {
            out.push('-');
        } else {
            out.push(c);
        }
    }
    out
}

/// The flags a config file stands for.
pub fn file_args(path: &Path, text: &str) -> Result<Vec<OsString>, Error> {
    let invalid = |reason: String| Error::Invalid { path: path.display().to_string(), reason };
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let Some(map) = value.as_mapping() else {
        if value.is_null() {
            return Ok(Vec::new());
        }
        return Err(invalid("expected a mapping of flag names to values".into()));
    };
    let mut args = Vec::new();
    for (k, v) in map {
        let key = k.as_str().ok_or_else(|| invalid(format!("key {k:?} is not a string")))?;
        if key == "config" {
            return Err(invalid("a config file cannot name another config file".into()));
        }
        let flag = flag_name(key);
        let scalar = |v: &serde_yaml::Value| -> Result<String, Error> {
            match v {
                serde_yaml::Value::String(s) => Ok(s.clone()),
                serde_yaml::Value::Number(n) => Ok(n.to_string()),
                serde_yaml::Value::Bool(b) => Ok(b.to_string()),
                other => Err(invalid(format!("{key}: unsupported value {other:?}"))),
            }
        };
        match v {
            serde_yaml::Value::Bool(true) => args.push(flag.into()),
            serde_yaml::Value::Bool(false) | serde_yaml::Value::Null => {}
            serde_yaml::Value::Sequence(items) => {
                let joined: Result<Vec<String>, Error> = items.iter().map(scalar).collect();
                args.push(format!("{flag}={}", joined?.join(",")).into());
            }
            other => args.push(format!("{flag}={}", scalar(other)?).into()),
        }
    }
    Ok(args)
}

/// Rewrites `sluice-proxy run ... --config FILE ...` into
/// `sluice-proxy run <flags from FILE> ...`; other argument lists pass through.
pub fn expand_args(argv: Vec<OsString>) -> Result<Vec<OsString>, Error> {
    let Some(run_at) = argv.iter().position(|a| a == "run") else { return Ok(argv) };
    let mut config = None;
    let mut rest = Vec::new();
    let mut it = argv[run_at + 1..].iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            config = it.next().cloned();
        } else if let Some(p) = s.strip_prefix("--config=") {
            config = Some(p.into());
        } else {
            rest.push(a.clone());
        }
    }
    let Some(path) = config else { return Ok(argv) };
    let path = std::path::PathBuf::from(path);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| Error::Read { path: path.display().to_string(), source })?;
    let mut out: Vec<OsString> = argv[..=run_at].to_vec();
    out.extend(file_args(&path, &text)?);
    out.extend(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn keys_become_flags_and_command_line_flags_come_last() {
        let dir = std::env::temp_dir().join(format!("sluice-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(&file, "bpffs: /sys/fs/bpf/x\nkeepOnExit: true\nlbMapMax: 1024\nexternalInterfaces: [eth0, eth1]\n").unwrap();
        let argv: Vec<OsString> = ["sluice-proxy", "run", "--config", file.to_str().unwrap(), "--bpffs", "/y"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = strs(&expand_args(argv).unwrap());
        assert_eq!(
            out,
            [
                "sluice-proxy",
                "run",
                "--bpffs=/sys/fs/bpf/x",
                "--keep-on-exit",
                "--lb-map-max=1024",
                "--external-interfaces=eth0,eth1",
                "--bpffs",
                "/y"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_files_are_clear_errors() {
        let p = Path::new("c.yaml");
        assert!(file_args(p, "- a\n- b\n").unwrap_err().to_string().contains("mapping"));
        assert!(file_args(p, "config: other.yaml\n").is_err());
        assert!(file_args(p, "{unclosed").is_err());
        assert!(file_args(p, "").unwrap().is_empty());
    }
}
