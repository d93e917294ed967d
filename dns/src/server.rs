//! Sockets and tasks: several SO_REUSEPORT UDP sockets answering from the
//! engine, TCP connections (at most `--max-tcp-connections`, one query at a
//! time each), `hickory_server::Server` for `--udp-engine hickory`, the model
//! updater following the snapshot channel, and the metrics endpoint.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::{
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
    Server,
};
use sluice_k8s::Snapshot;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    engine::{Engine, Local},
    model::{ClusterModel, Memo},
    Error,
};

/// Which code reads the UDP sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UdpEngine {
    /// One receive loop per socket answering cluster names inline (the fast path).
    Direct,
    /// `hickory_server::Server`'s UDP handling (a task per query), for comparison.
    Hickory,
}

/// Listening options.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: Vec<SocketAddr>,
    /// UDP sockets per listen address (SO_REUSEPORT spreads queries over them).
    pub udp_sockets: usize,
    pub udp_engine: UdpEngine,
    pub tcp_idle_timeout: Duration,
    pub metrics_addr: Option<SocketAddr>,
    /// Forwarded UDP queries in flight at most; more are answered SERVFAIL.
    pub max_pending: usize,
    /// TCP connections open at once; more are closed at once.
    pub max_tcp_connections: usize,
}

/// The engine as hickory's request handler (TCP, and UDP with `--udp-engine hickory`).
#[derive(Clone)]
pub struct Handler(pub Arc<Engine>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response_handle: R) -> ResponseInfo {
        let started = std::time::Instant::now();
        let ans = self.0.answer(request).await;
        let q = request.queries.queries().first().map_or(hickory_proto::rr::RecordType::Unknown(0), |q| q.query_type());
        self.0.metrics().observe(q, ans.rcode, started.elapsed());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = ans.authoritative;
        metadata.recursion_available = true;
        metadata.response_code = ans.rcode;
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(crate::engine::MAX_UDP_PAYLOAD);
        let edns = request.edns.as_ref().map(|_| &edns);
        let response = MessageResponseBuilder::new(&request.queries, edns).build(
            metadata,
            ans.answers.iter(),
            ans.authorities.iter(),
            std::iter::empty(),
            ans.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                debug!(error = %e, "sending a response failed");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
            }
        }
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol as SockProto, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProto::UDP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Room for bursts: a full receive buffer drops queries silently.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(sock.into())
}

async fn udp_loop(sock: Arc<tokio::net::UdpSocket>, engine: Arc<Engine>, pending: Arc<AtomicUsize>, max_pending: usize) {
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(1232);
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; keep serving.
                debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        match engine.handle_packet(buf[..n].to_vec(), src, Protocol::Udp, &mut out) {
            Local::Reply => {
                if let Err(e) = sock.send_to(&out, src).await {
                    debug!(%src, error = %e, "udp send failed");
                }
            }
            Local::Drop => {}
            Local::Pending(p) => {
                if pending.fetch_add(1, Ordering::Relaxed) >= max_pending {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    engine.metrics().forward_rejected.fetch_add(1, Ordering::Relaxed);
                    engine.reject(*p, &mut out);
                    let _ = sock.send_to(&out, src).await;
                    continue;
                }
                let (sock, engine, pending) = (sock.clone(), engine.clone(), pending.clone());
                tokio::spawn(async move {
                    let mut out = Vec::with_capacity(512);
                    engine.complete(*p, &mut out).await;
                    let _ = sock.send_to(&out, src).await;
                    pending.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// Accepts TCP connections while fewer than `max` are open; a connection
/// beyond that is closed at once (the client retries or gives up), so memory
/// for connections stays bounded.
async fn tcp_loop(listener: tokio::net::TcpListener, engine: Arc<Engine>, max: usize, idle: Duration) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max.min(tokio::sync::Semaphore::MAX_PERMITS)));
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                debug!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            engine.metrics().tcp_rejected.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            tcp_connection(stream, src, &engine, idle).await;
            drop(slot);
        });
    }
}

/// Answers the queries of one TCP connection in order until it closes or
/// stays idle for `idle`.
async fn tcp_connection(mut stream: tokio::net::TcpStream, src: SocketAddr, engine: &Engine, idle: Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut out = Vec::new();
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(idle, stream.read_u16()).await else { return };
        let mut query = vec![0u8; usize::from(len)];
        if !matches!(tokio::time::timeout(idle, stream.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        match engine.handle_packet(query, src, Protocol::Tcp, &mut out) {
            Local::Reply => {}
            Local::Drop => return,
            Local::Pending(p) => engine.complete(*p, &mut out).await,
        }
        let Ok(len) = u16::try_from(out.len()) else { return };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&out);
        if !matches!(tokio::time::timeout(idle, stream.write_all(&framed)).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// Rebuilds the model from every new snapshot and swaps it in.
pub async fn follow_snapshots(engine: Arc<Engine>, mut rx: watch::Receiver<Arc<Snapshot>>) {
    let mut memo = Memo::default();
    loop {
        let snap = rx.borrow_and_update().clone();
        let started = std::time::Instant::now();
        engine.set_nodes(&snap);
        // Built off the runtime's workers: queries keep being answered from
        // the current model (even with --threads 1) until the new one is swapped in.
        let cfg = engine.config().clone();
        let built = tokio::task::spawn_blocking(move || {
            let model = ClusterModel::build(&snap, &cfg, &mut memo);
            (model, memo)
        })
        .await;
        let model = match built {
            Ok((model, m)) => {
                memo = m;
                model
            }
            Err(e) => {
                warn!(error = %e, "building the record model failed; keeping the last model");
                memo = Memo::default();
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let names = model.len();
        let synced = model.is_synced();
        engine.set_model(model);
        debug!(names, synced, took = ?started.elapsed(), "record model rebuilt");
        if rx.changed().await.is_err() {
            warn!("the cluster source stopped; keeping the last model");
            return;
        }
    }
}

/// Binds every socket and serves until `shutdown` resolves.
///
/// # Errors
/// When a socket cannot be bound.
pub async fn serve(
    engine: Arc<Engine>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(follow_snapshots(engine.clone(), snapshots));

    let mut server = Server::new(Handler(engine.clone()));
    let pending = Arc::new(AtomicUsize::new(0));
    for addr in &opts.listen {
        let bind = |e: std::io::Error| Error::Bind { addr: *addr, source: e };
        for _ in 0..opts.udp_sockets.max(1) {
            let sock = udp_socket(*addr).map_err(bind)?;
            match opts.udp_engine {
                UdpEngine::Direct => {
                    tasks.spawn(udp_loop(Arc::new(sock), engine.clone(), pending.clone(), opts.max_pending));
                }
                UdpEngine::Hickory => server.register_socket(sock),
            }
        }
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
        tasks.spawn(tcp_loop(tcp, engine.clone(), opts.max_tcp_connections, opts.tcp_idle_timeout));
        info!(%addr, udp_sockets = opts.udp_sockets, engine = ?opts.udp_engine, "listening (UDP and TCP)");
    }
    if let Some(addr) = opts.metrics_addr {
        let listener = crate::metrics::bind_http(addr).await.map_err(|e| Error::Bind { addr, source: e })?;
        info!(%addr, "serving /metrics, /healthz, /readyz");
        tasks.spawn(crate::metrics::serve_http(listener, engine.metrics().clone()));
    }
    {
        let engine = engine.clone();
        tasks.spawn(async move {
            // Give the sockets a moment, then check whether upstreams send our own queries back.
            tokio::time::sleep(Duration::from_millis(200)).await;
            engine.forwarder().probe_for_loop().await;
        });
    }

    shutdown.await;
    info!("shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown_gracefully()).await;
    tasks.abort_all();
    Ok(())
}
