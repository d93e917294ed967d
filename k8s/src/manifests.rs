//! Standalone source: a directory of ordinary Kubernetes YAML (multi-document
//! files, or `kind: List`) followed with inotify plus a slow rescan as a
//! safety net. Only changed files are parsed again, objects of unchanged
//! files keep their allocation, so consumers' per-object memoisation holds,
//! and the snapshot is updated in place of being rebuilt from every file.

use std::{
    collections::{hash_map::DefaultHasher, BTreeMap, BTreeSet},
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use serde::Deserialize as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::{
    snapshot::{group_slice, ungroup_slice},
    EndpointSlice, Error, ObjectKey, Result, Snapshot,
};

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
    if let Some(objects) = parse_fast(file, text) {
        return (objects, Vec::new());
    }
    parse_slow(file, text)
}

/// The common case, about twice as fast as [`parse_slow`]: every document
/// names a known `apiVersion` and `kind` on top-level lines and
/// deserializes straight into its type (no intermediate `Value` tree).
/// `None` when any document does not, so the slow path can explain it.
fn parse_fast(file: &str, text: &str) -> Option<Vec<Object>> {
    let link = Some(format!("{}{file}", crate::semantics::SOURCE_LINK_PREFIX));
    let mut objects = Vec::new();
    for doc in split_documents(text)? {
        let (mut api_version, mut kind) = (None, None);
        for line in doc.lines() {
            if let Some(v) = line.strip_prefix("apiVersion:") {
                api_version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("kind:") {
                kind = Some(v.trim());
            }
        }
        let obj = match (api_version, kind) {
            (None, None) if doc.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) => continue,
            (Some(api_version), Some(kind)) => {
                known_kind(api_version, kind, serde_yaml::Deserializer::from_str(doc), link.clone())?.ok()?
            }
            _ => return None,
        };
        if obj.name().is_empty() {
            return None;
        }
        objects.push(obj);
    }
    Some(objects)
}

/// Deserializes one object of a kind the sources know through `de`, with
/// `link` (the file) as its selfLink; `None` for any other kind.
fn known_kind<'de, D: serde::Deserializer<'de>>(
    api_version: &str,
    kind: &str,
    de: D,
    link: Option<String>,
) -> Option<std::result::Result<Object, D::Error>> {
    fn linked<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
        mut o: T,
        link: Option<String>,
    ) -> Arc<T> {
        o.metadata_mut().self_link = link;
        Arc::new(o)
    }
    Some(match (api_version, kind) {
        ("v1", "Service") => Service::deserialize(de).map(|o| Object::Service(linked(o, link))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            EndpointSlice::deserialize(de).map(|o| Object::EndpointSlice(linked(o, link)))
        }
        ("v1", "Node") => Node::deserialize(de).map(|o| Object::Node(linked(o, link))),
        ("v1", "Namespace") => Namespace::deserialize(de).map(|o| Object::Namespace(linked(o, link))),
        _ => return None,
    })
}

/// Splits a YAML stream at its document markers (`---` and `...` at the
/// start of a line, which YAML forbids inside content). `None` when a
/// marker line carries content (`--- {a: b}`): the slow path reads those.
fn split_documents(text: &str) -> Option<Vec<&str>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let rest = ["---", "..."].iter().find_map(|m| {
            line.strip_prefix(m).filter(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
        });
        if let Some(rest) = rest {
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                return None;
            }
            docs.push(&text[start..at]);
            start = at + line.len();
        }
        at += line.len();
    }
    docs.push(&text[start..]);
    Some(docs)
}

/// Every document through a `Value`, so each problem gets a warning naming
/// the file and the object. Each document is parsed on its own: a problem in
/// one (a duplicate key, a syntax error) skips that document alone, never
/// the documents after it.
fn parse_slow(file: &str, text: &str) -> (Vec<Object>, Vec<String>) {
    let mut objects = Vec::new();
    let mut warnings = Vec::new();
    for (index, (line, doc)) in document_texts(text).into_iter().enumerate() {
        let at = format!("document {} (line {line})", index + 1);
        match serde_yaml::from_str::<serde_yaml::Value>(doc) {
            Ok(value) => parse_value(file, &at, value, &mut objects, &mut warnings),
            Err(e) => warnings.push(format!("{file}: {at}: malformed YAML, document skipped: {e}")),
        }
    }
    (objects, warnings)
}

/// Splits a YAML stream into its documents' texts, each with the line it
/// starts on (1-based). A `---` line starts a document (and stays in it:
/// it may carry content, `--- {a: b}`); a `...` line ends one. Directives
/// (`%YAML`) and comments before a document stay with it; a stream part
/// with nothing but blanks and comments is no document.
fn document_texts(text: &str) -> Vec<(usize, &str)> {
    let is_marker = |line: &str, m: &str| {
        line.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
    };
    let has_content = |part: &str| {
        part.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') && t != "..."
        }) || part.lines().any(|l| is_marker(l, "---"))
    };
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut at) = (0, 1, 0);
    // Whether the current part already holds a `---` or content (a second `---` then starts another).
    let mut opened = false;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if is_marker(line, "---") {
            if opened && has_content(&text[start..at]) {
                docs.push((start_line, &text[start..at]));
                (start, start_line) = (at, n + 1);
            }
            opened = true;
        } else if is_marker(line, "...") {
            at += line.len();
            if has_content(&text[start..at]) {
                docs.push((start_line, &text[start..at]));
            }
            (start, start_line, opened) = (at, n + 2, false);
            continue;
        } else if !opened && has_content(line) {
            opened = true;
        }
        at += line.len();
    }
    if has_content(&text[start..]) {
        docs.push((start_line, &text[start..]));
    }
    docs
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
    let link = Some(format!("{}{file}", crate::semantics::SOURCE_LINK_PREFIX));
    let result = match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = value.get("items").and_then(serde_yaml::Value::as_sequence).cloned();
            for (i, item) in items.unwrap_or_default().into_iter().enumerate() {
                parse_value(file, &format!("{at} item {}", i + 1), item, objects, warnings);
            }
            return;
        }
        (api_version, kind) => match known_kind(api_version, kind, value, link) {
            Some(result) => result,
            None => {
                warnings.push(format!(
                    "{file}: {at}: skipped {what}: unsupported kind {kind:?} of apiVersion {api_version:?}"
                ));
                return;
            }
        },
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

impl Object {
    fn name(&self) -> &str {
        let meta = match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    /// Which object this is: two files that define the same identity
    /// define the same object, and the later file (in path order) wins.
    fn identity(&self) -> Identity {
        let name = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            meta.name.clone().unwrap_or_default()
        };
        match self {
            Object::Service(o) => Identity::Service(ObjectKey::of(&o.metadata)),
            Object::EndpointSlice(o) => Identity::Slice(ObjectKey::of(&o.metadata)),
            Object::Node(o) => Identity::Node(name(&o.metadata)),
            Object::Namespace(o) => Identity::Namespace(name(&o.metadata)),
        }
    }

    /// Equal by value: an object a rewritten file defines unchanged keeps
    /// its old allocation in the snapshot, so consumers see it unchanged.
    fn same(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::Node(a), Object::Node(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::Namespace(a), Object::Namespace(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Identity {
    Service(ObjectKey),
    Slice(ObjectKey),
    Node(String),
    Namespace(String),
}

/// Every file defining one object, in path order (usually one; the last wins).
type ByFile = Vec<(Arc<Path>, Object)>;

struct FileEntry {
    /// Size, modification time and inode when last read: a rescan reads only
    /// files whose metadata changed.
    stamp: Option<Stamp>,
    hash: u64,
    objects: Vec<Object>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self { len: meta.len(), modified: meta.modified().ok(), inode: meta.ino() }
    }
}

/// The parsed contents of a manifest directory.
///
/// The snapshot is kept up to date as files change (persistent maps), so a
/// changed file costs O(its objects), not a rebuild from every file.
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
    /// Every definition of each object, by file; the last file's is in `snap`.
    defs: BTreeMap<Identity, ByFile>,
    snap: Snapshot,
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            defs: BTreeMap::new(),
            snap: Snapshot { synced: true, ..Snapshot::default() },
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again; returns whether anything changed. Files whose
    /// bytes did not change are not parsed again.
    pub fn rescan(&mut self) -> Result<bool> {
        let io = |source| Error::Io { path: self.dir.clone(), source };
        let mut seen = BTreeSet::new();
        let mut changed = false;
        let mut to_parse = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            // Editors' temporary and hidden files are not manifests.
            let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden || !is_manifest(&path) {
                continue;
            }
            // Follows symlinks (ConfigMap mounts are symlinks).
            let stamp = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Stamp::of(&m),
                _ => continue,
            };
            if self.files.get(&path).is_some_and(|f| f.stamp == Some(stamp)) {
                seen.insert(path);
                continue;
            }
            let text = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Removed between listing and reading: the next scan settles it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read manifest; keeping its previous objects");
                    seen.insert(path);
                    continue;
                }
            };
            let mut hasher = DefaultHasher::new();
            text.hash(&mut hasher);
            let hash = hasher.finish();
            seen.insert(path.clone());
            if let Some(f) = self.files.get_mut(&path).filter(|f| f.hash == hash) {
                f.stamp = Some(stamp);
                continue;
            }
            to_parse.push((path, stamp, hash, text));
        }
        // Parsing dominates a cold start (thousands of objects): spread the
        // changed files over the CPUs, then apply them in path order.
        for (path, stamp, hash, objects, warnings) in parse_files(to_parse) {
            for w in &warnings {
                warn!("{w}");
            }
            debug!(file = %path.display(), objects = objects.len(), "parsed manifest");
            self.replace_file(path, Some(FileEntry { stamp: Some(stamp), hash, objects }));
            changed = true;
        }
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !seen.contains(*p)).cloned().collect();
        for path in gone {
            self.replace_file(path, None);
            changed = true;
        }
        Ok(changed)
    }

    /// Puts the objects of `path` in place of what it held before and brings
    /// the snapshot up to date for every object either version defines.
    fn replace_file(&mut self, path: PathBuf, entry: Option<FileEntry>) {
        let old = match entry {
            Some(entry) => self.files.insert(path.clone(), entry),
            None => self.files.remove(&path),
        };
        let old = old.map(|e| e.objects).unwrap_or_default();
        let new = self.files.get(&path).map_or(&[][..], |e| &e.objects[..]);
        let touched: BTreeSet<Identity> = old.iter().chain(new).map(Object::identity).collect();
        let winner = |defs: &BTreeMap<Identity, ByFile>, id: &Identity| {
            defs.get(id).and_then(|by_file| by_file.last()).map(|(_, o)| o.clone())
        };
        let before: Vec<Option<Object>> = touched.iter().map(|id| winner(&self.defs, id)).collect();
        for obj in &old {
            let id = obj.identity();
            if let Some(by_file) = self.defs.get_mut(&id) {
                by_file.retain(|(p, _)| p.as_ref() != path.as_path());
                if by_file.is_empty() {
                    self.defs.remove(&id);
                }
            }
        }
        let shared: Arc<Path> = Arc::from(path.as_path());
        for obj in new {
            let by_file = self.defs.entry(obj.identity()).or_default();
            by_file.retain(|(p, _)| p.as_ref() != path.as_path());
            let at = by_file.partition_point(|(p, _)| p.as_ref() < path.as_path());
            by_file.insert(at, (shared.clone(), obj.clone()));
        }
        for (id, before) in touched.iter().zip(before) {
            let after = winner(&self.defs, id);
            if let (Some(a), Some(b)) = (&before, &after) {
                if a.same(b) {
                    continue;
                }
            }
            if let Some(files) = self.defs.get(id).filter(|f| f.len() > 1) {
                let files: Vec<_> = files.iter().map(|(p, _)| p.display().to_string()).collect();
                warn!(object = ?id, ?files, "defined in several files; the last one wins");
            }
            if let Some(before) = before {
                self.unset(&before);
            }
            if let Some(after) = after {
                self.set(after);
            }
        }
    }

    fn set(&mut self, obj: Object) {
        let name = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            meta.name.clone().unwrap_or_default()
        };
        let snap = &mut self.snap;
        match obj {
            Object::Service(o) => {
                snap.services.insert(ObjectKey::of(&o.metadata), o);
            }
            Object::EndpointSlice(o) => group_slice(&mut snap.slices, o),
            Object::Node(o) => {
                snap.nodes.insert(name(&o.metadata), o);
            }
            Object::Namespace(o) => {
                snap.namespaces.insert(name(&o.metadata), o);
            }
        }
    }

    fn unset(&mut self, obj: &Object) {
        let snap = &mut self.snap;
        match obj.identity() {
            Identity::Service(key) => {
                snap.services.remove(&key);
            }
            Identity::Slice(_) => {
                if let Object::EndpointSlice(o) = obj {
                    ungroup_slice(&mut snap.slices, o);
                }
            }
            Identity::Node(name) => {
                snap.nodes.remove(&name);
            }
            Identity::Namespace(name) => {
                snap.namespaces.remove(&name);
            }
        }
    }

    /// The snapshot of everything read so far (an O(1) clone).
    pub fn snapshot(&self) -> Snapshot {
        self.snap.clone()
    }
}

/// A changed file read but not parsed yet: path, stamp, hash, bytes.
type Unparsed = (PathBuf, Stamp, u64, Vec<u8>);
/// A parsed file: path, stamp, hash, objects, warnings.
type Parsed = (PathBuf, Stamp, u64, Vec<Object>, Vec<String>);

/// Parses `files` on up to one thread per CPU; the result is in path order.
fn parse_files(mut files: Vec<Unparsed>) -> Vec<Parsed> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let parse = |(path, stamp, hash, bytes): Unparsed| -> Parsed {
        let text = String::from_utf8_lossy(&bytes);
        let (objects, warnings) = parse_documents(&path.display().to_string(), &text);
        (path, stamp, hash, objects, warnings)
    };
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(files.len());
    if threads <= 1 {
        return files.into_iter().map(parse).collect();
    }
    // Round-robin, so big and small files mix; results are put back in order.
    let mut shares: Vec<Vec<(usize, Unparsed)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, f) in files.into_iter().enumerate() {
        shares[i % threads].push((i, f));
    }
    let mut out: Vec<(usize, Parsed)> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| scope.spawn(move || share.into_iter().map(|(i, f)| (i, parse(f))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, p)| p).collect()
}

/// How often the directory is rescanned even without an inotify event.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Lets a burst of changes (a `cp` or `mv` of many files) settle into one
/// update. Short, because only finished writes wake the watcher (see
/// [`wakes`]).
const DEBOUNCE: Duration = Duration::from_millis(2);

/// Whether an inotify event can mean a changed manifest: a file created,
/// removed, renamed or closed after writing. Opens, reads, attribute changes
/// and writes still in progress do not (a half-written file must not be
/// read; our own reads must not wake us again).
fn wakes(event: &notify::Result<notify::Event>) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match event {
        Err(_) => true,
        Ok(e) => match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_)) => false,
            _ => true,
        },
    }
}

/// Reads `dir` once, publishes the snapshot, and follows the directory in a
/// background task. The first snapshot is in the channel when this returns.
pub fn watch_dir(dir: impl Into<PathBuf>) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let mut manifests = ManifestDir::new(dir);
    manifests.rescan()?;
    let (tx, rx) = watch::channel(Arc::new(manifests.snapshot()));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res| {
        if wakes(&res) {
            let _ = ev_tx.send(());
        }
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
    fn fast_and_slow_paths_read_the_same_objects() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
                    spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}\n--- # second\n\
                    apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                    metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
                    addressType: IPv4\nendpoints: [{addresses: [198.18.1.10]}]\n---\n\n...\n";
        let fast = parse_fast("f.yaml", text).expect("plain documents take the fast path");
        let (slow, warnings) = parse_slow("f.yaml", text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(fast.len(), 2);
        assert_eq!(fast.len(), slow.len());
        for (a, b) in fast.iter().zip(&slow) {
            assert!(a.same(b), "fast {a:?} != slow {b:?}");
        }
        // Anything unusual goes the slow way, which names problems.
        for odd in [
            "--- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n",
            "apiVersion: v1\nkind: List\nitems: []\n",
            "apiVersion: v1\nkind: Service\nspec: {ports: [{port: eighty}]}\nmetadata: {name: s}\n",
        ] {
            assert!(parse_fast("f.yaml", odd).is_none(), "{odd}");
        }
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

    /// A file that needs the slow path (here: a List) with a duplicated key
    /// in one document: the documents after it are read too.
    #[test]
    fn a_duplicate_key_does_not_drop_the_documents_after_it() {
        let text = "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Namespace, metadata: {name: a}}]\n---\n\
                    apiVersion: v1\nkind: Namespace\nmetadata: {name: b, name: b2}\n---\n\
                    apiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n";
        let (objects, warnings) = parse_documents("f.yaml", text);
        let names: Vec<&str> = objects.iter().map(Object::name).collect();
        assert_eq!(names, ["a", "c"], "{warnings:?}");
        assert!(warnings.len() == 1 && warnings[0].contains("document 2") && warnings[0].contains("duplicate"), "{warnings:?}");
    }

    /// A problem in one document skips that document alone: the documents
    /// before and after it are read.
    #[test]
    fn a_bad_document_affects_that_document_alone() {
        let ns = |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
        let dup_top = "apiVersion: v1\nkind: Namespace\nmetadata: {name: dup}\nmetadata: {name: dup2}\n";
        let dup_nested = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: d, namespace: e}\nspec: {clusterIP: 198.19.0.1}\n";
        let dup_in_list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: x}\n  kind: Namespace\n";
        let unclosed = "key: [unclosed\n";
        // (case, file text, namespaces read, warnings naming "document N")
        let cases: Vec<(&str, String, Vec<&str>, Vec<&str>)> = vec![
            ("duplicate key first", format!("{dup_top}---\n{}---\n{}", ns("b"), ns("c")), vec!["b", "c"], vec!["document 1 (line 1)"]),
            ("duplicate key middle", format!("{}---\n{dup_top}---\n{}", ns("a"), ns("c")), vec!["a", "c"], vec!["document 2 (line 4)"]),
            ("duplicate key last", format!("{}---\n{}---\n{dup_top}", ns("a"), ns("b")), vec!["a", "b"], vec!["document 3"]),
            ("duplicate nested key", format!("{}---\n{dup_nested}---\n{}", ns("a"), ns("c")), vec!["a", "c"], vec!["document 2"]),
            ("duplicate key in a List item", format!("{dup_in_list}---\n{}", ns("b")), vec!["b"], vec!["document 1"]),
            ("syntax error middle", format!("{}---\n{unclosed}---\n{}", ns("a"), ns("c")), vec!["a", "c"], vec!["document 2"]),
            ("leading marker and comments", format!("# head\n---\n{}---\n{dup_top}--- # x\n{}", ns("a"), ns("c")), vec!["a", "c"], vec!["document 2"]),
            ("marker with content", format!("--- {{apiVersion: v1, kind: Namespace, metadata: {{name: a}}}}\n---\n{dup_top}--- {{apiVersion: v1, kind: Namespace, metadata: {{name: c}}}}\n"), vec!["a", "c"], vec!["document 2"]),
            ("document end markers", format!("{}...\n{dup_top}...\n---\n{}", ns("a"), ns("c")), vec!["a", "c"], vec!["document 2"]),
        ];
        for (case, text, want, warned) in cases {
            // The slow path, which every file with a document the fast path
            // cannot take goes through (the fast path deserializes straight
            // into k8s-openapi's types, which keep the last of duplicated keys).
            let (objects, warnings) = parse_slow("f.yaml", &text);
            let names: Vec<&str> = objects
                .iter()
                .map(|o| match o {
                    Object::Namespace(n) => n.metadata.name.as_deref().unwrap_or(""),
                    other => panic!("{case}: unexpected {other:?}"),
                })
                .collect();
            assert_eq!(names, want, "{case}: objects read; warnings {warnings:?}");
            assert_eq!(warnings.len(), warned.len(), "{case}: {warnings:?}");
            for (w, want) in warnings.iter().zip(&warned) {
                assert!(w.starts_with("f.yaml: ") && w.contains(want), "{case}: expected a warning naming {want:?}, saw {w:?}");
            }
        }
    }

    #[test]
    fn wrongly_typed_field_is_an_invalid_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: eighty}]}\n";
        let (objects, warnings) = parse_documents("s.yaml", text);
        assert!(objects.is_empty());
        assert!(warnings[0].contains("Service \"s\"") && warnings[0].contains("invalid"), "{warnings:?}");
    }

    /// A scratch directory removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(test: &str) -> Self {
            let path = std::env::temp_dir().join(format!("sluice-k8s-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create scratch dir");
            Self(path)
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.0.join(file), text).expect("write manifest");
        }

        fn remove(&self, file: &str) {
            std::fs::remove_file(self.0.join(file)).expect("remove manifest");
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn service(name: &str, ip: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {ip}}}\n---\n")
    }

    fn slice(name: &str, service: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nendpoints: []\n---\n"
        )
    }

    fn cluster_ip(snap: &Snapshot, name: &str) -> Option<String> {
        snap.services.get(&ObjectKey::new("default", name))?.spec.as_ref()?.cluster_ip.clone()
    }

    #[test]
    fn changed_file_updates_its_objects_and_others_keep_their_arcs() {
        let dir = Dir::new("changed-file");
        dir.write("a.yaml", &service("a", "198.19.0.1"));
        dir.write("b.yaml", &(service("b", "198.19.0.2") + &slice("b-1", "b")));
        let mut m = ManifestDir::new(&dir.0);
        assert!(m.rescan().expect("scan"));
        let before = m.snapshot();
        assert!(before.synced);

        dir.write("b.yaml", &(service("b", "198.19.0.3") + &slice("b-1", "c")));
        assert!(m.rescan().expect("scan"));
        let after = m.snapshot();
        let a = ObjectKey::new("default", "a");
        assert!(Arc::ptr_eq(&before.services[&a], &after.services[&a]), "a.yaml did not change");
        assert_eq!(cluster_ip(&after, "b").as_deref(), Some("198.19.0.3"));
        assert_eq!(
            after.slices.keys().collect::<Vec<_>>(),
            vec![&ObjectKey::new("default", "c")],
            "the slice moved from Service b to c"
        );
        assert!(!m.rescan().expect("scan"), "nothing changed on disk");

        dir.remove("b.yaml");
        assert!(m.rescan().expect("scan"));
        let gone = m.snapshot();
        assert_eq!(gone.services.keys().collect::<Vec<_>>(), vec![&a], "b.yaml's objects must go");
        assert!(gone.slices.is_empty(), "b.yaml's slice must go, saw {:?}", gone.slices);
    }

    #[test]
    fn object_in_two_files_comes_from_the_last_and_survives_its_removal() {
        let dir = Dir::new("two-files");
        dir.write("1.yaml", &service("web", "198.19.0.1"));
        dir.write("2.yaml", &service("web", "198.19.0.2"));
        let mut m = ManifestDir::new(&dir.0);
        m.rescan().expect("scan");
        assert_eq!(cluster_ip(&m.snapshot(), "web").as_deref(), Some("198.19.0.2"), "last file wins");
        dir.remove("2.yaml");
        assert!(m.rescan().expect("scan"));
        assert_eq!(
            cluster_ip(&m.snapshot(), "web").as_deref(),
            Some("198.19.0.1"),
            "the other file's definition must remain"
        );
    }

    #[test]
    fn list_items_are_read() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n";
        let (objects, warnings) = parse_documents("l.yaml", text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(objects.len(), 2);
    }
}
