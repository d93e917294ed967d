//! A small API server for tests that speaks the real Kubernetes list/watch
//! protocol over plain HTTP on loopback, so the kube-rs client path (paged
//! lists, watches from a resourceVersion, bookmarks, 410 Gone, reconnects)
//! is exercised for real.
//!
//! Objects are fed from k8s-openapi values ([`ApiServer::apply`],
//! [`ApiServer::delete`]) or YAML; every change bumps one global
//! resourceVersion and goes to the open watches and into a history that
//! watches resume from. [`ApiServer::compact`] forgets that history (a watch
//! from an older version then gets a 410 `ERROR` event, as from a real API
//! server after etcd compaction), [`ApiServer::disconnect_watches`] ends
//! every watch stream, and [`ApiServer::stop`]/[`ApiServer::resume`] make the
//! port refuse connections and listen again.
//!
//! Supported: `GET` lists (`limit`/`continue` paging, `fieldSelector` and
//! `labelSelector` equality terms), watches (`watch=true`, `resourceVersion`,
//! `allowWatchBookmarks`, `timeoutSeconds`, `sendInitialEvents` streaming
//! lists), single-object `GET`, and `/version`, `/api`, `/apis`. Any
//! k8s-openapi kind can be applied; Services, EndpointSlices, Nodes and
//! Namespaces list empty before the first one is applied.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    fmt::Write as _,
    future::Future as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    thread,
    time::Duration,
};

use hyper::{
    body::{Body as HttpBody, Bytes, Frame, SizeHint},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::{json, Value};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{mpsc, oneshot},
    task::JoinSet,
};

/// A fixture object as the k8s-openapi type a real API server serves
/// (every field, unlike the lean types the components keep).
#[derive(Clone, Debug)]
pub enum Fixture {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
    Namespace(Namespace),
}

/// The Services, EndpointSlices, Nodes and Namespaces of a multi-document
/// YAML text, in order.
///
/// # Panics
/// On a document it cannot read or of another kind (a fixture error).
pub fn fixtures(yaml: &str) -> Vec<Fixture> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("fixture document {i}: {e}"));
        if value.is_null() {
            continue;
        }
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        fn read<T: serde::de::DeserializeOwned>(i: usize, v: serde_yaml::Value) -> T {
            serde_yaml::from_value(v).unwrap_or_else(|e| panic!("fixture document {i}: {e}"))
        }
        out.push(match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => Fixture::Service(read(i, value)),
            ("discovery.k8s.io/v1", "EndpointSlice") => Fixture::EndpointSlice(read(i, value)),
            ("v1", "Node") => Fixture::Node(read(i, value)),
            ("v1", "Namespace") => Fixture::Namespace(read(i, value)),
            other => panic!("fixture document {i}: unsupported kind {other:?}"),
        });
    }
    out
}

/// How often open watches that asked for bookmarks get one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// Continue tokens kept for paged lists; older ones expire (410 on use).
const MAX_PAGERS: usize = 64;

/// The test API server. Runs on its own thread with its own tokio runtime;
/// dropping it stops both.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Mutex<State>>,
    control: mpsc::UnboundedSender<Control>,
    thread: Option<thread::JoinHandle<()>>,
}

enum Control {
    Stop(std::sync::mpsc::Sender<()>),
    Resume(std::sync::mpsc::Sender<()>),
    Shutdown,
}

/// A resource type as addressed in URLs: (`apiVersion`, plural).
type TypeKey = (String, String);

struct Kind {
    kind: String,
    namespaced: bool,
    /// (namespace, name) -> object; namespace empty for cluster-scoped kinds.
    objects: BTreeMap<(String, String), Stored>,
}

struct Stored {
    json: Bytes,
    labels: BTreeMap<String, String>,
}

struct HistoryEvent {
    rv: u64,
    ty: TypeKey,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    line: Bytes,
}

struct Watcher {
    ty: TypeKey,
    kind: String,
    api_version: String,
    filter: Filter,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// A paged list in progress: the items as of `rv`, served `limit` at a time.
struct Pager {
    rv: u64,
    items: Arc<Vec<Bytes>>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    kinds: BTreeMap<TypeKey, Kind>,
    history: Vec<HistoryEvent>,
    watchers: Vec<Watcher>,
    pagers: BTreeMap<u64, Pager>,
    next_pager: u64,
    list_requests: u64,
    watch_requests: u64,
}

impl State {
    fn register<K: k8s_openapi::Resource>(&mut self) -> TypeKey {
        let ty = (K::API_VERSION.to_owned(), K::URL_PATH_SEGMENT.to_owned());
        self.kinds.entry(ty.clone()).or_insert_with(|| Kind {
            kind: K::KIND.to_owned(),
            // The scope is a marker type without methods; its name says which one.
            namespaced: std::any::type_name::<K::Scope>().ends_with("NamespaceResourceScope"),
            objects: BTreeMap::new(),
        });
        ty
    }

    /// Records an event and sends it to the matching watches.
    fn emit(
        &mut self,
        ty: &TypeKey,
        event: &str,
        object: &[u8],
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) {
        let line = event_line(event, object);
        self.watchers.retain(|w| {
            if w.ty != *ty || !w.filter.matches(namespace, name, labels) {
                return true;
            }
            w.tx.send(line.clone()).is_ok()
        });
        self.history.push(HistoryEvent {
            rv: self.rv,
            ty: ty.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: labels.clone(),
            line,
        });
    }
}

fn event_line(event: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(br#"{"type":""#);
    line.extend_from_slice(event.as_bytes());
    line.extend_from_slice(br#"","object":"#);
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn labels_of(value: &Value) -> BTreeMap<String, String> {
    value["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

impl ApiServer {
    /// Listens on an ephemeral port of 127.0.0.1.
    ///
    /// # Panics
    /// When the thread, the runtime or the socket cannot be set up.
    pub fn start() -> ApiServer {
        let mut state = State::default();
        state.register::<Service>();
        state.register::<EndpointSlice>();
        state.register::<Node>();
        state.register::<Namespace>();
        let shared = Arc::new(Mutex::new(state));
        let (control, control_rx) = mpsc::unbounded_channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("test API server: building its tokio runtime");
                rt.block_on(server_main(thread_shared, control_rx, addr_tx));
            })
            .expect("test API server: spawning its thread");
        let addr = addr_rx
            .recv()
            .expect("test API server thread died before listening");
        ApiServer {
            addr,
            shared,
            control,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes an ordinary kubeconfig (one cluster, context and user, no
    /// credentials) pointing at this server.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sluice-test\n  cluster:\n    server: {}\n\
             contexts:\n- name: sluice-test\n  context:\n    cluster: sluice-test\n    user: sluice-test\n\
             current-context: sluice-test\nusers:\n- name: sluice-test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("writing kubeconfig {}: {e}", path.display()));
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates or replaces an object: sets a new resourceVersion (and a uid
    /// when it has none; namespace `default` for a namespaced kind without
    /// one) and sends ADDED or MODIFIED to the watches.
    ///
    /// # Panics
    /// When the object has no name or does not serialize.
    pub fn apply<K>(&self, obj: &K)
    where
        K: serde::Serialize + k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        let meta = obj.metadata();
        let name = meta
            .name
            .clone()
            .unwrap_or_else(|| panic!("apply: a {} without metadata.name", K::KIND));
        let mut value = serde_json::to_value(obj)
            .unwrap_or_else(|e| panic!("apply: serializing {} {name}: {e}", K::KIND));
        let mut state = self.state();
        let ty = state.register::<K>();
        let namespaced = state.kinds[&ty].namespaced;
        let namespace = if namespaced {
            meta.namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned())
        } else {
            String::new()
        };
        state.rv += 1;
        let rv = state.rv;
        let key = (namespace.clone(), name.clone());
        let old_uid = state.kinds[&ty].objects.get(&key).and_then(|o| {
            serde_json::from_slice::<Value>(&o.json).ok()?["metadata"]["uid"]
                .as_str()
                .map(str::to_owned)
        });
        let existed = state.kinds[&ty].objects.contains_key(&key);
        let m = &mut value["metadata"];
        m["resourceVersion"] = json!(rv.to_string());
        if namespaced {
            m["namespace"] = json!(namespace);
        }
        if m.get("uid").is_none_or(Value::is_null) {
            m["uid"] =
                json!(old_uid.unwrap_or_else(|| format!("00000000-0000-4000-8000-{rv:012}")));
        }
        let labels = labels_of(&value);
        let json = Bytes::from(serde_json::to_vec(&value).expect("a JSON value serializes"));
        state.emit(
            &ty,
            if existed { "MODIFIED" } else { "ADDED" },
            &json,
            &namespace,
            &name,
            &labels,
        );
        state
            .kinds
            .get_mut(&ty)
            .expect("registered above")
            .objects
            .insert(key, Stored { json, labels });
    }

    /// Deletes an object (no-op when absent) and sends DELETED, carrying
    /// its last state with a new resourceVersion, to the watches.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: Option<&str>, name: &str) {
        let mut state = self.state();
        let ty = state.register::<K>();
        let namespace = if state.kinds[&ty].namespaced {
            namespace.unwrap_or("default").to_owned()
        } else {
            String::new()
        };
        let Some(old) = state
            .kinds
            .get_mut(&ty)
            .and_then(|k| k.objects.remove(&(namespace.clone(), name.to_owned())))
        else {
            return;
        };
        state.rv += 1;
        let mut value: Value = serde_json::from_slice(&old.json).expect("stored objects are JSON");
        value["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        let json = serde_json::to_vec(&value).expect("a JSON value serializes");
        state.emit(&ty, "DELETED", &json, &namespace, name, &old.labels);
    }

    /// Applies every Service, EndpointSlice, Node and Namespace of a
    /// multi-document YAML text.
    ///
    /// # Panics
    /// On any document it cannot read (a fixture error).
    pub fn apply_yaml_str(&self, yaml: &str) {
        for obj in fixtures(yaml) {
            self.apply_fixture(&obj);
        }
    }

    /// Applies one fixture object.
    pub fn apply_fixture(&self, obj: &Fixture) {
        match obj {
            Fixture::Service(o) => self.apply(o),
            Fixture::EndpointSlice(o) => self.apply(o),
            Fixture::Node(o) => self.apply(o),
            Fixture::Namespace(o) => self.apply(o),
        }
    }

    /// Ends every open watch stream cleanly (clients resume from their last
    /// resourceVersion).
    pub fn disconnect_watches(&self) {
        self.state().watchers.clear();
    }

    /// Forgets the event history and outstanding continue tokens: a watch
    /// from a resourceVersion older than the current one gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state();
        state.compacted = state.rv;
        state.history.clear();
        state.pagers.clear();
    }

    /// Closes the listener and every open connection; connecting is refused
    /// until [`ApiServer::resume`]. Objects and history are kept.
    pub fn stop(&self) {
        self.control_and_wait(Control::Stop);
    }

    /// Listens again on the same port.
    pub fn resume(&self) {
        self.control_and_wait(Control::Resume);
    }

    fn control_and_wait(&self, cmd: fn(std::sync::mpsc::Sender<()>) -> Control) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .send(cmd(tx))
            .expect("test API server thread is gone");
        rx.recv().expect("test API server thread died");
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// How many list requests (pages included) were served.
    pub fn list_requests(&self) -> u64 {
        self.state().list_requests
    }

    /// How many watch requests were served.
    pub fn watch_requests(&self) -> u64 {
        self.state().watch_requests
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Rebinding the same port after stop() must not wait for TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

struct Serving {
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    fn spawn(listener: TcpListener, shared: Arc<Mutex<State>>) -> Self {
        let (shutdown, rx) = oneshot::channel();
        Self {
            shutdown,
            task: tokio::spawn(accept_loop(listener, shared, rx)),
        }
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

async fn server_main(
    shared: Arc<Mutex<State>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
) {
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("test API server: binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound socket has an address");
    let mut serving = Some(Serving::spawn(listener, shared.clone()));
    let _ = addr_tx.send(addr);
    let bookmarks = tokio::spawn(bookmark_loop(shared.clone()));
    while let Some(cmd) = control.recv().await {
        match cmd {
            Control::Stop(done) => {
                if let Some(s) = serving.take() {
                    s.stop().await;
                }
                shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .watchers
                    .clear();
                let _ = done.send(());
            }
            Control::Resume(done) => {
                if serving.is_none() {
                    // While stopped, a client retrying 127.0.0.1:PORT can
                    // briefly hold the port itself (a TCP self-connect from
                    // that ephemeral port): retry for a bounded while.
                    let mut tries = 0;
                    let listener = loop {
                        match bind(addr) {
                            Ok(l) => break l,
                            Err(e) if tries < 100 => {
                                tries += 1;
                                let _ = e;
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("test API server: rebinding {addr}: {e}"),
                        }
                    };
                    serving = Some(Serving::spawn(listener, shared.clone()));
                }
                let _ = done.send(());
            }
            Control::Shutdown => break,
        }
    }
    bookmarks.abort();
    if let Some(s) = serving.take() {
        s.stop().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Mutex<State>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                let _ = sock.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let resp = handle(&shared, &req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), service)
                        .await;
                });
            }
        }
    }
    // Aborts every connection (watch streams included) before the listener closes.
    conns.shutdown().await;
}

async fn bookmark_loop(shared: Arc<Mutex<State>>) {
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    loop {
        tick.tick().await;
        let mut state = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rv = state.rv;
        state
            .watchers
            .retain(|w| !w.bookmarks || w.tx.send(bookmark_line(w, rv, false)).is_ok());
    }
}

fn bookmark_line(w: &Watcher, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = json!({ "kind": w.kind, "apiVersion": w.api_version, "metadata": metadata });
    event_line(
        "BOOKMARK",
        &serde_json::to_vec(&object).expect("a JSON value serializes"),
    )
}

/// The response body: a whole JSON document, or a watch stream that ends when
/// the server drops its sender or `timeoutSeconds` passes.
enum Body {
    Full(Option<Bytes>),
    Watch {
        rx: mpsc::UnboundedReceiver<Bytes>,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Watch { rx, deadline } => {
                if let Some(d) = deadline {
                    if d.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                }
                rx.poll_recv(cx)
                    .map(|line| line.map(|l| Ok(Frame::data(l))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Watch { .. } => SizeHint::default(),
        }
    }
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Full(Some(body.into())))
        .expect("static response parts are valid")
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn error_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        status_object(code.as_u16(), reason, message).to_string(),
    )
}

/// One term of a selector: `key=value`, `key==value`, `key!=value`.
#[derive(Clone, Debug)]
struct Term {
    key: String,
    value: String,
    equal: bool,
}

fn parse_selector(text: &str) -> Result<Vec<Term>, String> {
    text.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let (key, value, equal) = if let Some((k, v)) = t.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = t.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = t.split_once('=') {
                (k, v, true)
            } else {
                return Err(format!(
                    "unsupported selector term {t:?} (only =, ==, != are)"
                ));
            };
            Ok(Term {
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
                equal,
            })
        })
        .collect()
}

#[derive(Clone, Debug, Default)]
struct Filter {
    namespace: Option<String>,
    fields: Vec<Term>,
    labels: Vec<Term>,
}

impl Filter {
    fn matches(&self, namespace: &str, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let field_ok = self.fields.iter().all(|t| {
            let actual = match t.key.as_str() {
                "metadata.name" => name,
                "metadata.namespace" => namespace,
                _ => return false,
            };
            (actual == t.value) == t.equal
        });
        let label_ok = self
            .labels
            .iter()
            .all(|t| (labels.get(&t.key).map(String::as_str) == Some(t.value.as_str())) == t.equal);
        field_ok && label_ok
    }
}

/// Where a request points.
enum Target {
    Collection {
        ty: TypeKey,
        namespace: Option<String>,
    },
    Object {
        ty: TypeKey,
        namespace: String,
        name: String,
    },
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let ty = |plural: &str| (api_version.clone(), plural.to_owned());
    Some(match rest {
        [plural] => Target::Collection {
            ty: ty(plural),
            namespace: None,
        },
        ["namespaces", ns, plural] => Target::Collection {
            ty: ty(plural),
            namespace: Some((*ns).to_owned()),
        },
        [plural, name] => Target::Object {
            ty: ty(plural),
            namespace: String::new(),
            name: (*name).to_owned(),
        },
        ["namespaces", ns, plural, name] => Target::Object {
            ty: ty(plural),
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
        },
        _ => return None,
    })
}

fn handle(shared: &Mutex<State>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "this test server is read-only over HTTP",
        );
    }
    let path = req.uri().path();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    match path {
        "/version" => {
            return json_response(
                StatusCode::OK,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sluice-test", "platform": "linux/amd64"})
                    .to_string(),
            )
        }
        "/api" => {
            return json_response(
                StatusCode::OK,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}).to_string(),
            )
        }
        "/apis" => {
            let gv = json!({"groupVersion": "discovery.k8s.io/v1", "version": "v1"});
            let groups = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "discovery.k8s.io", "versions": [gv], "preferredVersion": gv}
            ]});
            return json_response(StatusCode::OK, groups.to_string());
        }
        _ => {}
    }
    let Some(target) = parse_path(path) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route for {path}"),
        );
    };
    let mut state = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match target {
        Target::Object {
            ty,
            namespace,
            name,
        } => {
            let found = state
                .kinds
                .get(&ty)
                .and_then(|k| k.objects.get(&(namespace, name.clone())));
            match found {
                Some(o) => json_response(StatusCode::OK, o.json.clone()),
                None => error_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {name:?} not found", ty.1),
                ),
            }
        }
        Target::Collection { ty, namespace } => {
            if !state.kinds.contains_key(&ty) {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("the server could not find {}/{}", ty.0, ty.1),
                );
            }
            let mut filter = Filter {
                namespace,
                ..Filter::default()
            };
            for (param, slot) in [
                ("fieldSelector", &mut filter.fields),
                ("labelSelector", &mut filter.labels),
            ] {
                match query.get(param).map(|s| parse_selector(s)) {
                    Some(Ok(terms)) => *slot = terms,
                    Some(Err(e)) => {
                        return error_response(StatusCode::BAD_REQUEST, "BadRequest", &e)
                    }
                    None => {}
                }
            }
            let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
            if flag("watch") {
                watch(
                    &mut state,
                    ty,
                    filter,
                    &query,
                    flag("allowWatchBookmarks"),
                    flag("sendInitialEvents"),
                )
            } else {
                list(&mut state, &ty, &filter, &query)
            }
        }
    }
}

fn list(
    state: &mut State,
    ty: &TypeKey,
    filter: &Filter,
    query: &HashMap<String, String>,
) -> Response<Body> {
    state.list_requests += 1;
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let (rv, items, offset) = if let Some(token) = query.get("continue").filter(|t| !t.is_empty()) {
        let parsed = token
            .split_once(':')
            .and_then(|(id, off)| Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
        let Some((pager, offset)) =
            parsed.and_then(|(id, off)| state.pagers.get(&id).map(|p| ((id, p), off)))
        else {
            return error_response(
                StatusCode::GONE,
                "Expired",
                "the provided continue parameter is too old",
            );
        };
        (pager.1.rv, pager.1.items.clone(), Some((pager.0, offset)))
    } else {
        let kind = &state.kinds[ty];
        let items: Vec<Bytes> = kind
            .objects
            .iter()
            .filter(|((ns, name), o)| filter.matches(ns, name, &o.labels))
            .map(|(_, o)| o.json.clone())
            .collect();
        (state.rv, Arc::new(items), None)
    };
    let start = offset.map_or(0, |(_, off)| off);
    let end = limit.map_or(items.len(), |l| (start + l).min(items.len()));
    let mut continue_token = None;
    if end < items.len() {
        let id = match offset {
            Some((id, _)) => id,
            None => {
                state.next_pager += 1;
                let id = state.next_pager;
                state.pagers.insert(
                    id,
                    Pager {
                        rv,
                        items: items.clone(),
                    },
                );
                while state.pagers.len() > MAX_PAGERS {
                    state.pagers.pop_first();
                }
                id
            }
        };
        continue_token = Some(format!("{id}:{end}"));
    } else if let Some((id, _)) = offset {
        state.pagers.remove(&id);
    }
    let kind = &state.kinds[ty].kind;
    let mut body =
        Vec::with_capacity(items[start..end].iter().map(|i| i.len() + 1).sum::<usize>() + 256);
    let mut head = format!(
        r#"{{"kind":"{kind}List","apiVersion":"{}","metadata":{{"resourceVersion":"{rv}""#,
        ty.0
    );
    if let Some(token) = &continue_token {
        let _ = write!(
            head,
            r#","continue":"{token}","remainingItemCount":{}"#,
            items.len() - end
        );
    }
    head.push_str(r#"},"items":["#);
    body.extend_from_slice(head.as_bytes());
    for (i, item) in items[start..end].iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    json_response(StatusCode::OK, body)
}

fn watch(
    state: &mut State,
    ty: TypeKey,
    filter: Filter,
    query: &HashMap<String, String>,
    bookmarks: bool,
    send_initial_events: bool,
) -> Response<Body> {
    state.watch_requests += 1;
    let (tx, rx) = mpsc::unbounded_channel();
    let kind = &state.kinds[&ty];
    let watcher = Watcher {
        ty: ty.clone(),
        kind: kind.kind.clone(),
        api_version: ty.0.clone(),
        filter,
        bookmarks,
        tx,
    };
    let from = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let current_state = |w: &Watcher| {
        for ((ns, name), o) in &kind.objects {
            if w.filter.matches(ns, name, &o.labels) {
                let _ = w.tx.send(event_line("ADDED", &o.json));
            }
        }
    };
    if send_initial_events {
        // Streaming list: the current state, then a bookmark marking its end.
        current_state(&watcher);
        let _ = watcher.tx.send(bookmark_line(&watcher, state.rv, true));
    } else if from.is_empty() || from == "0" {
        current_state(&watcher);
    } else {
        let Ok(from) = from.parse::<u64>() else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("invalid resourceVersion {from:?}"),
            );
        };
        if from < state.compacted {
            // What a real API server sends after compaction: 200, one ERROR event, end of stream.
            let status = status_object(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", state.compacted),
            );
            let _ = watcher
                .tx
                .send(event_line("ERROR", status.to_string().as_bytes()));
            drop(watcher);
            return watch_response(rx, None);
        }
        for ev in state.history.iter().filter(|e| e.rv > from && e.ty == ty) {
            if watcher.filter.matches(&ev.namespace, &ev.name, &ev.labels) {
                let _ = watcher.tx.send(ev.line.clone());
            }
        }
    }
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0);
    state.watchers.push(watcher);
    watch_response(rx, timeout.map(Duration::from_secs))
}

fn watch_response(rx: mpsc::UnboundedReceiver<Bytes>, timeout: Option<Duration>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Watch {
            rx,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
        })
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_collections_and_objects() {
        let cases = [
            ("/api/v1/services", "v1", "services", None, None),
            (
                "/api/v1/namespaces/prod/services",
                "v1",
                "services",
                Some("prod"),
                None,
            ),
            (
                "/apis/discovery.k8s.io/v1/endpointslices",
                "discovery.k8s.io/v1",
                "endpointslices",
                None,
                None,
            ),
            ("/api/v1/namespaces", "v1", "namespaces", None, None),
            (
                "/api/v1/namespaces/prod",
                "v1",
                "namespaces",
                None,
                Some("prod"),
            ),
            ("/api/v1/nodes/node-a", "v1", "nodes", None, Some("node-a")),
        ];
        for (path, api_version, plural, ns, name) in cases {
            let (ty, got_ns, got_name) = match parse_path(path) {
                Some(Target::Collection { ty, namespace }) => (ty, namespace, None),
                Some(Target::Object { ty, name, .. }) => (ty, None, Some(name)),
                None => panic!("{path}: expected a route, saw none"),
            };
            assert_eq!(
                (ty.0.as_str(), ty.1.as_str()),
                (api_version, plural),
                "{path}"
            );
            assert_eq!(got_ns.as_deref(), ns, "{path}");
            assert_eq!(got_name.as_deref(), name, "{path}");
        }
        assert!(parse_path("/healthz").is_none());
    }

    #[test]
    fn field_selector_on_name_and_inequality() {
        let f = Filter {
            fields: parse_selector("metadata.name=node-a").unwrap(),
            ..Filter::default()
        };
        assert!(f.matches("", "node-a", &BTreeMap::new()));
        assert!(!f.matches("", "node-b", &BTreeMap::new()));
        let f = Filter {
            labels: parse_selector("app!=web").unwrap(),
            ..Filter::default()
        };
        assert!(
            f.matches("", "x", &BTreeMap::new()),
            "absent label is not equal to web"
        );
        assert!(!f.matches("", "x", &BTreeMap::from([("app".into(), "web".into())])));
        assert!(
            parse_selector("app in (a,b)").is_err(),
            "set-based selectors are refused, not ignored"
        );
    }
}
