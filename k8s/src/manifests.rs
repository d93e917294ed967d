//! Standalone source: a directory of ordinary Kubernetes YAML (multi-document
//! files, or `kind: List`) followed with inotify plus a slow rescan as a
//! safety net. Only changed files are parsed again, and objects of unchanged
//! files keep their allocation, so consumers' per-object memoisation holds.

use std::{
    collections::{hash_map::DefaultHasher, BTreeMap},
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::{Error, Result, Snapshot, SnapshotBuilder};

/// One object read from a manifest.
#[derive(Clone, Debug)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
    Namespace(Arc<Namespace>),
}

/// Parses the documents of one file. Returns the objects it understood and one
/// warning per document it skipped, each naming the file and the object.
pub fn parse_documents(file: &str, text: &str) -> (Vec<Object>, Vec<String>) {
    let mut objects = Vec::new();
    let mut warnings = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_no = index + 1;
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                warnings.push(format!("{file}: document {doc_no}: malformed YAML: {e}"));
                // A syntax error leaves the rest of the stream unreadable.
                break;
            }
        };
        parse_value(file, &format!("document {doc_no}"), value, &mut objects, &mut warnings);
    }
    (objects, warnings)
}

fn parse_value(
    file: &str,
    at: &str,
    value: serde_yaml::Value,
    objects: &mut Vec<Object>,
    warnings: &mut Vec<String>,
) {
    if value.is_null() {
        return;
    }
    let field = |name: &str| value.get(name).and_then(serde_yaml::Value::as_str).map(str::to_owned);
    let api_version = field("apiVersion").unwrap_or_default();
    let kind = field("kind").unwrap_or_default();
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or("")
        .to_owned();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or("")
        .to_owned();
    let what = if namespace.is_empty() {
        format!("{kind} {name:?}")
    } else {
        format!("{kind} {namespace}/{name}")
    };
    let mut value = value;
    if let Some(meta) = value.get_mut("metadata").and_then(serde_yaml::Value::as_mapping_mut) {
        let annotations = meta
            .entry("annotations".into())
            .or_insert_with(|| serde_yaml::Value::Mapping(serde_yaml::Mapping::new()));
        if let Some(a) = annotations.as_mapping_mut() {
            a.insert(crate::semantics::SOURCE_ANNOTATION.into(), file.into());
        }
    }
    let result = match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = value.get("items").and_then(serde_yaml::Value::as_sequence).cloned();
            for (i, item) in items.unwrap_or_default().into_iter().enumerate() {
                parse_value(file, &format!("{at} item {}", i + 1), item, objects, warnings);
            }
            return;
        }
        ("v1", "Service") => {
            serde_yaml::from_value(value).map(|o: Service| Object::Service(Arc::new(o)))
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => serde_yaml::from_value(value)
            .map(|o: EndpointSlice| Object::EndpointSlice(Arc::new(o))),
        ("v1", "Node") => serde_yaml::from_value(value).map(|o: Node| Object::Node(Arc::new(o))),
        ("v1", "Namespace") => {
            serde_yaml::from_value(value).map(|o: Namespace| Object::Namespace(Arc::new(o)))
        }
        _ => {
            warnings.push(format!(
                "{file}: {at}: skipped {what}: unsupported kind {kind:?} of apiVersion {api_version:?}"
            ));
            return;
        }
    };
    match result {
        Ok(obj) if name.is_empty() => {
            let _ = obj;
            warnings.push(format!("{file}: {at}: skipped {what}: metadata.name is missing"));
        }
        Ok(obj) => objects.push(obj),
        Err(e) => warnings.push(format!("{file}: {at}: skipped {what}: invalid: {e}")),
    }
}

struct FileEntry {
    hash: u64,
    objects: Vec<Object>,
}

/// The parsed contents of a manifest directory.
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), files: BTreeMap::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again; returns whether anything changed. Files whose
    /// bytes did not change are not parsed again.
    pub fn rescan(&mut self) -> Result<bool> {
        let io = |source| Error::Io { path: self.dir.clone(), source };
        let mut seen = Vec::new();
        let mut changed = false;
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            // Editors' temporary and hidden files are not manifests.
            let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden || !is_manifest(&path) || !path.is_file() {
                continue;
            }
            let text = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Removed between listing and reading: the next scan settles it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read manifest; keeping its previous objects");
                    seen.push(path);
                    continue;
                }
            };
            let mut hasher = DefaultHasher::new();
            text.hash(&mut hasher);
            let hash = hasher.finish();
            seen.push(path.clone());
            if self.files.get(&path).is_some_and(|f| f.hash == hash) {
                continue;
            }
            let text = String::from_utf8_lossy(&text);
            let (objects, warnings) = parse_documents(&path.display().to_string(), &text);
            for w in &warnings {
                warn!("{w}");
            }
            debug!(file = %path.display(), objects = objects.len(), "parsed manifest");
            self.files.insert(path, FileEntry { hash, objects });
            changed = true;
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(path));
        Ok(changed || before != self.files.len())
    }

    /// The snapshot of everything read so far.
    pub fn snapshot(&self) -> Snapshot {
        let mut b = SnapshotBuilder::new();
        for entry in self.files.values() {
            for obj in &entry.objects {
                match obj {
                    Object::Service(o) => b.service(o.clone()),
                    Object::EndpointSlice(o) => b.slice(o.clone()),
                    Object::Node(o) => b.node(o.clone()),
                    Object::Namespace(o) => b.namespace(o.clone()),
                };
            }
        }
        b.synced(true);
        b.build()
    }
}

/// How often the directory is rescanned even without an inotify event.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Lets a burst of writes (an editor's save, a `cp` of many files) settle into one update.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// Reads `dir` once, publishes the snapshot, and follows the directory in a
/// background task. The first snapshot is in the channel when this returns.
pub fn watch_dir(dir: impl Into<PathBuf>) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let mut manifests = ManifestDir::new(dir);
    manifests.rescan()?;
    let (tx, rx) = watch::channel(Arc::new(manifests.snapshot()));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |_res| {
        let _ = ev_tx.send(());
    })
    .map_err(|source| Error::Watch { path: manifests.dir().to_owned(), source })?;
    notify::Watcher::watch(&mut watcher, manifests.dir(), notify::RecursiveMode::NonRecursive)
        .map_err(|source| Error::Watch { path: manifests.dir().to_owned(), source })?;
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut tick = tokio::time::interval(RESCAN_EVERY);
        loop {
            tokio::select! {
                ev = ev_rx.recv() => {
                    if ev.is_none() { break; }
                    tokio::time::sleep(DEBOUNCE).await;
                    while ev_rx.try_recv().is_ok() {}
                }
                _ = tick.tick() => {}
                () = tx.closed() => break,
            }
            match manifests.rescan() {
                Ok(true) => {
                    let _ = tx.send(Arc::new(manifests.snapshot()));
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "rescanning manifests failed; keeping the last state"),
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_file_yields_every_known_kind() {
        let text = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [198.18.1.10]}]
---
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
";
        let (objects, warnings) = parse_documents("f.yaml", text);
        assert!(warnings.is_empty(), "expected no warnings, saw {warnings:?}");
        assert_eq!(objects.len(), 3, "expected Service, EndpointSlice and Node, saw {objects:?}");
    }

    #[test]
    fn unknown_kind_is_skipped_with_a_warning_naming_file_and_object() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: prod}\n";
        let (objects, warnings) = parse_documents("dir/app.yaml", text);
        assert!(objects.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("dir/app.yaml") && warnings[0].contains("Deployment prod/web"),
            "warning should name the file and the object, saw {:?}",
            warnings[0]
        );
    }

    #[test]
    fn malformed_yaml_warns_and_keeps_earlier_documents() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkey: [unclosed\n";
        let (objects, warnings) = parse_documents("bad.yaml", text);
        assert_eq!(objects.len(), 1);
        assert!(warnings[0].contains("bad.yaml") && warnings[0].contains("malformed"), "{warnings:?}");
    }

    #[test]
    fn wrongly_typed_field_is_an_invalid_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: eighty}]}\n";
        let (objects, warnings) = parse_documents("s.yaml", text);
        assert!(objects.is_empty());
        assert!(warnings[0].contains("Service \"s\"") && warnings[0].contains("invalid"), "{warnings:?}");
    }

    #[test]
    fn list_items_are_read() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n";
        let (objects, warnings) = parse_documents("l.yaml", text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(objects.len(), 2);
    }
}
