//! Delegated IPAM (host-local and friends): the plugin named by `ipam.type`
//! is run from `CNI_PATH` with the same environment and config, as the
//! spec's delegation rules say; its error object is passed through.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::spec::{AddResult, Code, Env, Error, NetConf, Result};

fn find_plugin(env: &Env, name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        return Err(Error::new(Code::InvalidConfig, "invalid ipam type", format!("{name:?} contains '/'")));
    }
    env.path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(Code::InvalidEnvironment, "ipam plugin not found", format!("{name} is not in CNI_PATH {:?}", env.path))
        })
}

/// Runs the delegated IPAM plugin for `command`; ADD's result is returned.
pub(super) fn exec_ipam(env: &Env, conf: &NetConf, command: &str, stdin: &[u8]) -> Result<Option<AddResult>> {
    let name = conf.delegated_ipam().expect("only called for delegated ipam");
    let bin = find_plugin(env, name)?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::new(Code::Io, "cannot run the ipam plugin", format!("{}: {e}", bin.display())))?;
    let mut input = child.stdin.take().expect("piped");
    let write = input.write_all(stdin);
    drop(input);
    let mut out = Vec::new();
    let _ = child.stdout.take().expect("piped").read_to_end(&mut out);
    let status = child.wait().map_err(|e| Error::new(Code::Io, "ipam plugin", e.to_string()))?;
    write.map_err(|e| Error::new(Code::Io, "cannot write to the ipam plugin", e.to_string()))?;
    if !status.success() {
        return Err(serde_json::from_slice::<Error>(&out).unwrap_or_else(|_| {
            Error::new(
                Code::Internal,
                format!("ipam plugin {name} failed"),
                format!("{status}: {}", String::from_utf8_lossy(&out).trim()),
            )
        }));
    }
    if command != "ADD" {
        return Ok(None);
    }
    serde_json::from_slice(&out).map(Some).map_err(|e| {
        Error::new(Code::Decode, format!("cannot decode the result of ipam plugin {name}"), e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipam_type_with_a_slash_is_refused_and_a_missing_one_is_code_4() {
        let env = Env { path: "/nonexistent-a:/nonexistent-b".into(), ..Env::default() };
        assert_eq!(find_plugin(&env, "../bin/sh").unwrap_err().code, Code::InvalidConfig as u32);
        assert_eq!(find_plugin(&env, "host-local").unwrap_err().code, Code::InvalidEnvironment as u32);
    }
}
