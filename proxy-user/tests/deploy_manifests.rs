//! Every deployment manifest parses into its k8s-openapi type, and the
//! ConfigMap's config file is one the agent accepts.

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::Deserialize as _;

fn documents(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: invalid YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(path: &str, doc: &serde_yaml::Value) -> T {
    serde_yaml::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{path}: {} does not parse as its type: {e}", doc["kind"].as_str().unwrap_or("?")))
}

#[test]
fn proxy_deployment_manifests_parse_into_their_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sluice-proxy.yaml");
    let mut kinds = Vec::new();
    for doc in documents(path) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "ServiceAccount" => drop(typed::<ServiceAccount>(path, &doc)),
            "ClusterRole" => {
                let role: ClusterRole = typed(path, &doc);
                for rule in role.rules.unwrap_or_default() {
                    assert!(
                        rule.verbs.iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                        "the agent only reads: {:?}",
                        rule.verbs
                    );
                }
            }
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(path, &doc)),
            "ConfigMap" => {
                let cm: ConfigMap = typed(path, &doc);
                let config = cm.data.unwrap_or_default().remove("config.yaml").expect("config.yaml key");
                let args = proxy_user::config::file_args(std::path::Path::new("config.yaml"), &config)
                    .expect("the shipped config file is valid");
                assert!(!args.is_empty());
            }
            "DaemonSet" => {
                let ds: DaemonSet = typed(path, &doc);
                let spec = ds.spec.unwrap().template.spec.unwrap();
                assert_eq!(spec.host_network, Some(true));
                let sc = spec.containers[0].security_context.clone().unwrap();
                assert_eq!(sc.privileged, Some(false), "minimal capabilities, not privileged");
            }
            other => panic!("{path}: unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    for want in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing from {path}");
    }
}

#[test]
fn bundled_example_manifests_are_read_without_warnings() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/demo.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let (objects, warnings) = sluice_k8s::manifests::parse_documents(path, &text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(objects.len() >= 5);
}
