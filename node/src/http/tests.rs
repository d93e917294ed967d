use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::atomic::AtomicUsize,
};

use super::*;

struct Fixed {
    live: Result<(), String>,
    ready: Result<(), String>,
}

impl Probes for Fixed {
    fn metrics(&self) -> String {
        "# TYPE up gauge\nup 1\n".into()
    }
    fn live(&self) -> Result<(), String> {
        self.live.clone()
    }
    fn ready(&self) -> Result<(), String> {
        self.ready.clone()
    }
}

fn ok_probes() -> Arc<dyn Probes> {
    Arc::new(Fixed { live: Ok(()), ready: Ok(()) })
}

fn text(head: &str, probes: &dyn Probes) -> String {
    String::from_utf8(respond(head.as_bytes(), probes)).unwrap()
}

#[test]
fn routes_answer_metrics_health_and_readiness() {
    let up = Fixed { live: Ok(()), ready: Ok(()) };
    let down = Fixed { live: Err("loop stalled".into()), ready: Err("waiting for the first sync".into()) };
    let cases: &[(&str, &Fixed, &str, &str)] = &[
        ("GET /metrics HTTP/1.1\r\n\r\n", &up, "200 OK", "up 1\n"),
        ("GET /metrics?name[]=x HTTP/1.1\r\n\r\n", &up, "200 OK", "up 1\n"),
        ("GET /healthz HTTP/1.1\r\n\r\n", &up, "200 OK", "ok\n"),
        ("GET /healthz HTTP/1.1\r\n\r\n", &down, "503 Service Unavailable", "loop stalled\n"),
        ("GET /readyz HTTP/1.1\r\n\r\n", &up, "200 OK", "ready\n"),
        ("GET /readyz HTTP/1.1\r\n\r\n", &down, "503 Service Unavailable", "waiting for the first sync\n"),
        ("GET / HTTP/1.1\r\n\r\n", &up, "404 Not Found", "not found"),
        ("POST /metrics HTTP/1.1\r\n\r\n", &up, "405 Method Not Allowed", "only GET and HEAD"),
        ("", &up, "405 Method Not Allowed", ""),
    ];
    for (head, probes, status, body) in cases {
        let out = text(head, *probes);
        assert!(out.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{head:?}: expected {status}, got {out:?}");
        assert!(out.contains(body), "{head:?}: expected body {body:?}, got {out:?}");
        assert!(out.contains("Connection: close\r\n"), "{out:?}");
    }
    let head = text("HEAD /metrics HTTP/1.1\r\n\r\n", &up);
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");
    assert!(head.contains("Content-Length: 21\r\n"), "HEAD names the GET body's length: {head:?}");
}

#[test]
fn backoff_doubles_up_to_the_cap_and_resets_after_a_success() {
    let mut b = Backoff::default();
    let seen: Vec<Duration> = (0..10).map(|_| b.failed()).collect();
    assert_eq!(seen[0], Backoff::MIN);
    assert!(seen.windows(2).all(|w| w[1] == (w[0] * 2).min(Backoff::MAX)), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), Backoff::MAX, "{seen:?}");
    b.succeeded();
    assert_eq!(b.failed(), Backoff::MIN);
}

/// Virtual time: an accept that fails forever is retried about
/// log2(MAX/MIN) + seconds times, not in a tight loop (which would also
/// never let the virtual clock reach the end of this test).
#[tokio::test(start_paused = true)]
async fn accept_errors_back_off_instead_of_spinning() {
    let calls = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(Stats::default());
    let counted = calls.clone();
    let accept = move || {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Err::<tokio::io::DuplexStream, _>(io::Error::from_raw_os_error(libc::EMFILE)) }
    };
    let serve = serve_connections(accept, ok_probes(), Limits::default(), stats.clone());
    tokio::select! {
        () = serve => panic!("the accept loop never ends"),
        () = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
    let n = calls.load(Ordering::Relaxed);
    // 5 ms doubling to 1 s: 8 retries in the first 1.3 s, then one per second.
    assert!((10..=20).contains(&n), "accept retried {n} times in 10 s of failures; expected about 17");
    assert_eq!(stats.accept_errors.load(Ordering::Relaxed), n as u64);
}

fn try_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    Ok(out)
}

fn get(addr: SocketAddr, path: &str) -> String {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// Runs an endpoint on its own runtime thread; the server thread ends with the test process.
fn start(limits: Limits) -> (SocketAddr, Arc<Stats>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let ep = Endpoint::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), limits).await.unwrap();
            tx.send((ep.local_addr().unwrap(), ep.stats())).unwrap();
            ep.serve(ok_probes()).await;
        });
    });
    rx.recv().unwrap()
}

/// Reads until EOF or error; true when the server closed without answering.
fn closed_unanswered(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn serves_on_the_loopback_address_it_was_given() {
    let (addr, _) = start(Limits::default());
    assert!(addr.ip().is_loopback(), "{addr}");
    let out = get(addr, "/metrics");
    assert!(out.starts_with("HTTP/1.1 200 OK") && out.ends_with("up 1\n"), "{out:?}");
}

#[test]
fn binding_a_taken_port_says_what_to_do() {
    let (addr, _) = start(Limits::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(Endpoint::bind(addr, Limits::default())).err().expect("the port is taken");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("--metrics-addr"), "{err}");
}

#[test]
fn connections_over_the_cap_are_closed_unanswered_and_a_freed_slot_serves_again() {
    let (addr, stats) = start(Limits { max_connections: 2, timeout: Duration::from_secs(300) });
    // Two clients that never send a request hold both slots.
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut over = TcpStream::connect(addr).unwrap();
    assert!(closed_unanswered(&mut over), "a third connection must be closed while two are in progress");
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
    drop(held);
    // The held clients' slots come free once the server sees them close.
    let answered = (0..200).any(|_| {
        let out = try_get(addr, "/healthz").unwrap_or_default();
        if out.starts_with("HTTP/1.1 200 OK") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(answered, "after the held clients left, requests must be answered again");
}

#[test]
fn a_client_that_sends_nothing_is_timed_out() {
    let (addr, stats) = start(Limits { max_connections: 4, timeout: Duration::from_millis(100) });
    let mut slow = TcpStream::connect(addr).unwrap();
    assert!(closed_unanswered(&mut slow), "a silent client must be disconnected");
    assert_eq!(stats.timed_out.load(Ordering::Relaxed), 1);
    assert!(get(addr, "/readyz").starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn loop_health_is_ready_after_a_good_pass_until_a_bad_one_and_alive_while_it_beats() {
    let h = LoopHealth::new("sluice_x", Duration::from_secs(3600));
    assert!(h.live().is_ok());
    assert_eq!(h.ready(), Err("no converge pass has succeeded yet".into()));
    h.pass(true);
    assert!(h.ready().is_ok());
    h.pass(false);
    assert_eq!(h.ready(), Err("the last converge pass failed".into()));
    let m = h.metrics();
    for line in ["sluice_x_converge_passes_total 2\n", "sluice_x_converge_failures_total 1\n", "sluice_x_ready 0\n"] {
        assert!(m.contains(line), "{line:?} missing from:\n{m}");
    }
    let stalled = LoopHealth::new("sluice_x", Duration::ZERO);
    std::thread::sleep(Duration::from_millis(5));
    assert!(stalled.live().is_err(), "a loop silent for longer than max_silence is not alive");
}
