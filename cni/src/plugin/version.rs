//! VERSION: the asked version (when supported) and every supported one.

use serde_json::Value;

use crate::spec::{VersionInfo, LATEST_VERSION, SUPPORTED_VERSIONS};

/// The answer to VERSION. The config may be just `{"cniVersion": ...}` or even empty.
pub(super) fn version(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned());
    let info = VersionInfo {
        cni_version: asked,
        supported_versions: SUPPORTED_VERSIONS.iter().map(|s| (*s).to_owned()).collect(),
    };
    serde_json::to_value(info).expect("version info serialises")
}

#[cfg(test)]
mod tests {
    use super::super::{run, Output};
    use crate::spec::{Env, LATEST_VERSION, SUPPORTED_VERSIONS};

    #[test]
    fn version_answers_the_asked_version_and_lists_all() {
        let env = Env { command: "VERSION".into(), ..Env::default() };
        let Output::Json(v) = run(&env, br#"{"cniVersion":"0.4.0"}"#).unwrap() else { panic!("VERSION prints JSON") };
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), SUPPORTED_VERSIONS.len());
        let Output::Json(v) = run(&env, b"").unwrap() else { panic!() };
        assert_eq!(v["cniVersion"], LATEST_VERSION);
        let Output::Json(v) = run(&env, br#"{"cniVersion":"9.9.9"}"#).unwrap() else { panic!() };
        assert_eq!(v["cniVersion"], LATEST_VERSION, "an unsupported ask gets the latest");
    }
}
