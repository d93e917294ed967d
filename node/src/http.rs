//! The one HTTP endpoint of a node daemon: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (it serves what it
//! should). Three fixed GET routes do not need a web framework; what they do
//! need on a node is to be harmless when exposed:
//!
//! - it binds where the operator says; the daemons default to loopback, as
//!   kube-proxy does (`127.0.0.1:10249`);
//! - the accept loop backs off on errors (EMFILE, ENFILE, ENOBUFS) instead
//!   of spinning on them ([`Backoff`]);
//! - at most [`Limits::max_connections`] requests are in progress; a
//!   connection over the cap is closed at once, unanswered;
//! - a client gets [`Limits::timeout`] to send its request head and again to
//!   read the answer, then the connection is closed.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    sync::Semaphore,
};
use tracing::{debug, warn};

/// What the endpoint reports; each daemon implements it over its own state.
pub trait Probes: Send + Sync + 'static {
    /// The Prometheus text exposition of every metric.
    fn metrics(&self) -> String;
    /// `Ok` while the daemon's loop is alive; `Err(reason)` makes `/healthz` 503.
    fn live(&self) -> Result<(), String> {
        Ok(())
    }
    /// `Ok` when the daemon serves what it should; `Err(reason)` makes `/readyz` 503.
    fn ready(&self) -> Result<(), String>;
}

/// [`Probes`] of a converge loop, for a daemon without metrics of its own:
/// alive while the loop has run within `max_silence`, ready after a
/// successful pass until a pass fails, and two counters.
#[derive(Debug)]
pub struct LoopHealth {
    prefix: &'static str,
    max_silence: Duration,
    started: std::time::Instant,
    /// Milliseconds after `started` of the last loop iteration.
    beat_ms: AtomicU64,
    passes: AtomicU64,
    failures: AtomicU64,
    /// 0: no pass yet, 1: last pass succeeded, 2: last pass failed.
    state: AtomicU64,
}

impl LoopHealth {
    /// `prefix` names the metrics (`<prefix>_converge_passes_total`, ...).
    pub fn new(prefix: &'static str, max_silence: Duration) -> Self {
        Self {
            prefix,
            max_silence,
            started: std::time::Instant::now(),
            beat_ms: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            state: AtomicU64::new(0),
        }
    }

    /// The loop is alive (call once per iteration).
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    /// One converge pass ended, successfully or not.
    pub fn pass(&self, ok: bool) {
        self.beat();
        self.passes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.state.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
    }
}

impl Probes for LoopHealth {
    fn metrics(&self) -> String {
        let p = self.prefix;
        format!(
            "# HELP {p}_converge_passes_total Converge passes run.\n# TYPE {p}_converge_passes_total counter\n{p}_converge_passes_total {}\n\
             # HELP {p}_converge_failures_total Converge passes that failed.\n# TYPE {p}_converge_failures_total counter\n{p}_converge_failures_total {}\n\
             # HELP {p}_ready 1 when the last converge pass succeeded.\n# TYPE {p}_ready gauge\n{p}_ready {}\n",
            self.passes.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            u8::from(self.state.load(Ordering::Relaxed) == 1),
        )
    }

    fn live(&self) -> Result<(), String> {
        let since = self.started.elapsed().saturating_sub(Duration::from_millis(self.beat_ms.load(Ordering::Relaxed)));
        if since <= self.max_silence {
            Ok(())
        } else {
            Err(format!("the converge loop has not run for {}s", since.as_secs()))
        }
    }

    fn ready(&self) -> Result<(), String> {
        match self.state.load(Ordering::Relaxed) {
            1 => Ok(()),
            0 => Err("no converge pass has succeeded yet".into()),
            _ => Err("the last converge pass failed".into()),
        }
    }
}

/// Bounds on what clients of the endpoint can cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests in progress at once; more connections are closed unanswered.
    pub max_connections: usize,
    /// Time a client gets to send its request head, and again to read the answer.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 32, timeout: Duration::from_secs(5) }
    }
}

/// Longest request head read; a scrape or a probe sends a few hundred bytes.
const MAX_REQUEST: usize = 4096;

/// Counters of what the endpoint did (for tests and logs).
#[derive(Debug, Default)]
pub struct Stats {
    pub served: AtomicU64,
    /// Connections closed unanswered because [`Limits::max_connections`] were in progress.
    pub rejected: AtomicU64,
    /// Connections closed because the client was slower than [`Limits::timeout`].
    pub timed_out: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// Delay after a failed `accept()`: doubles from [`Backoff::MIN`] up to
/// [`Backoff::MAX`] while accept keeps failing, back to nothing after a
/// success. Failing accepts are usually out of file descriptors: retrying at
/// once would spin a core and flood the log while nothing changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    current: Option<Duration>,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(5);
    pub const MAX: Duration = Duration::from_secs(1);

    /// The delay to wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        let next = self.current.map_or(Self::MIN, |d| (d * 2).min(Self::MAX));
        self.current = Some(next);
        next
    }

    pub fn succeeded(&mut self) {
        self.current = None;
    }
}

/// A bound endpoint, not yet serving.
pub struct Endpoint {
    listener: TcpListener,
    limits: Limits,
    stats: Arc<Stats>,
}

impl Endpoint {
    /// Binds `addr`.
    ///
    /// # Errors
    /// When the address cannot be bound; the message says what to do for
    /// the usual causes (the port taken, an address this host does not have).
    pub async fn bind(addr: SocketAddr, limits: Limits) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => {
                    " (another process serves there, e.g. kube-proxy or a second copy of this daemon: stop it or choose another address with --metrics-addr)"
                }
                io::ErrorKind::AddrNotAvailable => {
                    " (no interface of this network namespace has that address: choose one it has with --metrics-addr, e.g. 127.0.0.1:PORT)"
                }
                _ => "",
            };
            io::Error::new(e.kind(), format!("{e}{hint}"))
        })?;
        Ok(Self { listener, limits, stats: Arc::default() })
    }

    /// The address actually bound (port 0 resolved).
    ///
    /// # Errors
    /// Only when the socket is gone.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serves until the future is dropped.
    pub async fn serve(self, probes: Arc<dyn Probes>) {
        let Self { listener, limits, stats } = self;
        serve_connections(|| async { listener.accept().await.map(|(c, _)| c) }, probes, limits, stats).await;
    }

    /// Serves on a task of the current runtime until the handle is aborted.
    pub fn spawn(self, probes: Arc<dyn Probes>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.serve(probes))
    }
}

/// The accept loop over any source of connections (`accept` is the
/// listener's; tests inject failing ones).
pub async fn serve_connections<C, A, F>(mut accept: A, probes: Arc<dyn Probes>, limits: Limits, stats: Arc<Stats>)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnMut() -> F,
    F: Future<Output = io::Result<C>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = Backoff::default();
    loop {
        let conn = match accept().await {
            Ok(c) => {
                backoff.succeeded();
                c
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.failed();
                // At most one line per MAX once it keeps failing.
                if delay < Backoff::MAX || stats.accept_errors.load(Ordering::Relaxed) % 60 == 1 {
                    warn!(error = %e, retry_in = ?delay, "metrics/health endpoint: accept failed");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            debug!(max = limits.max_connections, "metrics/health endpoint: connection over the cap closed");
            drop(conn);
            continue;
        };
        let (probes, stats) = (probes.clone(), stats.clone());
        tokio::spawn(async move {
            answer(conn, probes.as_ref(), limits.timeout, &stats).await;
            drop(permit);
        });
    }
}

async fn answer<C: AsyncRead + AsyncWrite + Unpin>(mut conn: C, probes: &dyn Probes, timeout: Duration, stats: &Stats) {
    let mut buf = vec![0u8; MAX_REQUEST];
    let Ok(head) = tokio::time::timeout(timeout, read_head(&mut conn, &mut buf)).await else {
        stats.timed_out.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let response = match head {
        Ok(Some(len)) => respond(&buf[..len], probes),
        Ok(None) => response("400 Bad Request", "text/plain", "request head too large or incomplete\n".into(), false),
        Err(_) => return,
    };
    match tokio::time::timeout(timeout, async {
        conn.write_all(&response).await?;
        conn.shutdown().await
    })
    .await
    {
        Ok(Ok(())) => {
            stats.served.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => debug!(error = %e, "metrics/health client went away"),
        Err(_) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads until the end of the request head; `Ok(None)` when the client
/// closed first or the head does not fit.
async fn read_head<C: AsyncRead + Unpin>(conn: &mut C, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut len = 0;
    while len < buf.len() {
        let n = conn.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || buf[..len].windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(len));
        }
    }
    Ok(None)
}

/// The whole response to one request head (pure: the routes in one place).
pub fn respond(head: &[u8], probes: &dyn Probes) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return response("405 Method Not Allowed", "text/plain", "only GET and HEAD\n".into(), true),
    };
    let path = target.split('?').next().unwrap_or(target);
    let probe = |r: Result<(), String>, ok: &str| match r {
        Ok(()) => ("200 OK", format!("{ok}\n")),
        Err(reason) => ("503 Service Unavailable", format!("{reason}\n")),
    };
    let (status, ctype, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", probes.metrics()),
        "/healthz" | "/livez" => {
            let (s, b) = probe(probes.live(), "ok");
            (s, "text/plain", b)
        }
        "/readyz" => {
            let (s, b) = probe(probes.ready(), "ready");
            (s, "text/plain", b)
        }
        _ => ("404 Not Found", "text/plain", "not found: /metrics, /healthz, /readyz\n".to_owned()),
    };
    response(status, ctype, body, with_body)
}

fn response(status: &str, ctype: &str, body: String, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests;
