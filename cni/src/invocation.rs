//! One plugin invocation's input, checked before anything touches the
//! system: which command, the configuration on stdin, the version gates and
//! the environment each command needs. Depends on [`crate::spec`] alone, so
//! the fuzz target (`cni/fuzz`) builds it without the rest of the crate.

use crate::spec::{Code, Env, Error, NetConf, Result, Version};

/// A CNI command this plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
}

/// One invocation, its input checked: what [`prepare`] returns.
#[derive(Debug)]
pub enum Prepared {
    /// VERSION (it needs no configuration).
    Version,
    /// Any other command with its parsed configuration and version.
    Command { command: Command, conf: NetConf, version: Version },
}

/// Checks one invocation's input without touching the system: the command,
/// the configuration on stdin, the version gates (GC and STATUS need
/// 1.1.0), and the environment variables the command needs. Every failure
/// is the spec's error object, with the caller's `cniVersion` once known.
/// This is all of the plugin's input handling; the fuzz target drives it.
pub fn prepare(env: &Env, stdin: &[u8]) -> Result<Prepared> {
    let command = match env.command.as_str() {
        "VERSION" => return Ok(Prepared::Version),
        "" => {
            return Err(Error::new(Code::InvalidEnvironment, "missing required environment variables", "CNI_COMMAND"))
        }
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "GC" => Command::Gc,
        "STATUS" => Command::Status,
        other => {
            return Err(Error::new(
                Code::InvalidEnvironment,
                "unknown CNI_COMMAND",
                format!("{other:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"),
            ))
        }
    };
    let (conf, version) = NetConf::parse(stdin)?;
    let checked = || -> Result<()> {
        match command {
            Command::Gc | Command::Status if !version.at_least_1_1() => Err(Error::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!("{} needs cniVersion 1.1.0, the config says {}", env.command, conf.cni_version),
            )),
            Command::Add => {
                env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
                env.validate_ids()
            }
            Command::Check => env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
            Command::Del => env.require(&["CNI_CONTAINERID", "CNI_IFNAME"]),
            Command::Gc | Command::Status => Ok(()),
        }
    };
    checked().map_err(|e| e.with_version(&conf.cni_version))?;
    Ok(Prepared::Command { command, conf, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_checks_each_commands_environment_and_keeps_the_callers_version() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"sluice-cni"}"#;
        let env = |command: &str, id: &str, netns: &str, ifname: &str| Env {
            command: command.into(),
            container_id: id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ..Env::default()
        };
        let code = |e: &Env| prepare(e, conf).err().map(|e| (e.code, e.cni_version));
        assert_eq!(code(&env("DEL", "c", "", "eth0")), None, "DEL needs no netns");
        assert_eq!(code(&env("DEL", "", "", "eth0")), Some((4, "1.0.0".into())));
        assert_eq!(code(&env("CHECK", "c", "", "eth0")), Some((4, "1.0.0".into())));
        assert_eq!(code(&env("ADD", "c d", "/n", "eth0")), Some((4, "1.0.0".into())), "invalid container id");
        assert_eq!(code(&env("ADD", "c", "/n", "a/b")), Some((4, "1.0.0".into())), "invalid ifname");
        assert!(matches!(
            prepare(&env("ADD", "c", "/n", "eth0"), conf).unwrap(),
            Prepared::Command { command: Command::Add, .. }
        ));
        assert_eq!(prepare(&env("ADD", "c", "/n", "eth0"), b"{").unwrap_err().code, 6);
    }
}
