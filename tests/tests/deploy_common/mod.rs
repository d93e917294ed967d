//! The deployment manifests as typed objects: a small kustomize resolver
//! (the subset the repository uses: `resources` of files and directories)
//! and parsing of every document into k8s-openapi types.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize as _;

/// The registry and repository prefix of every image.
pub const IMAGE_PREFIX: &str = "ghcr.io/sluice-net/";
/// The workspace version every image is tagged with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The repository root (the tests crate lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The component directories holding manifests.
pub const COMPONENT_DIRS: [&str; 3] = ["proxy-user/deploy", "cni/deploy", "dns/deploy"];

/// One Kubernetes object from a manifest file, typed.
#[derive(Debug, Clone)]
pub enum Object {
    DaemonSet(Box<DaemonSet>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ConfigMap(Box<ConfigMap>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
}

impl Object {
    pub fn kind_name(&self) -> (String, String) {
        let (kind, meta) = match self {
            Object::DaemonSet(o) => ("DaemonSet", &o.metadata),
            Object::Deployment(o) => ("Deployment", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::ConfigMap(o) => ("ConfigMap", &o.metadata),
            Object::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Object::ClusterRole(o) => ("ClusterRole", &o.metadata),
            Object::ClusterRoleBinding(o) => ("ClusterRoleBinding", &o.metadata),
        };
        (kind.to_owned(), meta.name.clone().unwrap_or_default())
    }

    /// The pod template of a workload.
    pub fn pod_template(&self) -> Option<(&str, &PodTemplateSpec)> {
        match self {
            Object::DaemonSet(o) => Some((o.metadata.name.as_deref()?, &o.spec.as_ref()?.template)),
            Object::Deployment(o) => Some((o.metadata.name.as_deref()?, &o.spec.as_ref()?.template)),
            _ => None,
        }
    }
}

fn typed<T: serde::de::DeserializeOwned>(doc: serde_yaml::Value, what: &str) -> Box<T> {
    Box::new(serde_yaml::from_value(doc).unwrap_or_else(|e| panic!("{what}: does not parse into its k8s-openapi type: {e}")))
}

/// Parses every document of a manifest file into its k8s-openapi type.
///
/// # Panics
/// On an unreadable file, invalid YAML, an unknown kind or a document that
/// does not fit its type.
pub fn parse_file(path: &Path) -> Vec<Object> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let doc = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
        if doc.is_null() {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let what = format!("{} document {i} ({kind})", path.display());
        out.push(match kind.as_str() {
            "DaemonSet" => Object::DaemonSet(typed(doc, &what)),
            "Deployment" => Object::Deployment(typed(doc, &what)),
            "Service" => Object::Service(typed(doc, &what)),
            "ConfigMap" => Object::ConfigMap(typed(doc, &what)),
            "ServiceAccount" => Object::ServiceAccount(typed(doc, &what)),
            "ClusterRole" => Object::ClusterRole(typed(doc, &what)),
            "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(doc, &what)),
            other => panic!("{what}: kind {other:?} is not one the deployment uses; add it to deploy_common"),
        });
    }
    out
}

/// The files a kustomization directory pulls in, depth first, in order.
///
/// # Panics
/// When the kustomization uses a field this resolver does not implement
/// (so a test never checks less than what kustomize would build).
pub fn kustomize_files(dir: &Path) -> Vec<PathBuf> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let k: serde_yaml::Mapping = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for key in k.keys() {
        let key = key.as_str().unwrap_or_default();
        assert!(
            ["apiVersion", "kind", "resources"].contains(&key),
            "{}: field {key:?} is not implemented by the test's kustomize resolver",
            path.display()
        );
    }
    assert_eq!(k.get("kind").and_then(|v| v.as_str()), Some("Kustomization"), "{}", path.display());
    let mut files = Vec::new();
    for r in k.get("resources").and_then(|v| v.as_sequence()).into_iter().flatten() {
        let r = r.as_str().unwrap_or_else(|| panic!("{}: a resource is not a string", path.display()));
        let target = dir.join(r);
        if target.is_dir() {
            files.extend(kustomize_files(&target));
        } else {
            assert!(target.is_file(), "{}: resource {r} does not exist", path.display());
            files.push(target);
        }
    }
    files
}

/// Every object a kustomization builds (relative to the repository root).
pub fn kustomize(dir: &str) -> Vec<Object> {
    let objects: Vec<Object> = kustomize_files(&repo_root().join(dir)).iter().flat_map(|f| parse_file(f)).collect();
    let mut seen = BTreeSet::new();
    for o in &objects {
        assert!(seen.insert(o.kind_name()), "{dir}: {:?} is defined twice", o.kind_name());
    }
    objects
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Object {
    objects
        .iter()
        .find(|o| o.kind_name() == (kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", objects.iter().map(Object::kind_name).collect::<Vec<_>>()))
}

/// The single DaemonSet/Deployment `name` and its pod template.
pub fn workload<'a>(objects: &'a [Object], name: &str) -> &'a PodTemplateSpec {
    objects
        .iter()
        .filter_map(Object::pod_template)
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no workload {name}"))
}

/// The text of key `key` in ConfigMap `name`.
pub fn config_map_data(objects: &[Object], name: &str, key: &str) -> String {
    let Object::ConfigMap(cm) = find(objects, "ConfigMap", name) else { unreachable!() };
    cm.data.as_ref().and_then(|d| d.get(key)).cloned().unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"))
}
