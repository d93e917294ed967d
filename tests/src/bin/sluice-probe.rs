//! sluice-probe: the traffic generator and echo server of the end-to-end
//! tests and benchmarks. Servers answer every request with
//! `"<id> <peer addr:port>\n"`, so a client learns which backend answered
//! and which source address that backend saw. Clients print one JSON object.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "sluice-probe",
    about = "echo server and traffic probe for Sluice tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer TCP and UDP requests with "<id> <peer>\n"; prints "ready" once listening.
    Serve {
        #[arg(long)]
        id: String,
        #[arg(long = "tcp")]
        tcp: Vec<u16>,
        #[arg(long = "udp")]
        udp: Vec<u16>,
        /// Listen only on this address (default: 0.0.0.0 and [::], separately).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// Exit after this many seconds, so a leaked server cannot live forever.
        #[arg(long, default_value_t = 3600)]
        max_lifetime_s: u64,
    },
    /// N sequential TCP transactions (connect, "hi\n", read reply, close).
    Tcp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Pause between transactions.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// N UDP request/replies ("hi\n" -> reply, source recorded).
    Udp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// connect() the socket and use send/recv (reply source from getpeername).
        #[arg(long)]
        connected: bool,
        /// One socket for all datagrams (default: a fresh socket per datagram).
        #[arg(long)]
        reuse: bool,
        /// With --reuse: after an error, open (and connect) a fresh socket for
        /// the next datagram, as a resolver does. The output then also lists
        /// every result in order under "sequence".
        #[arg(long)]
        reconnect: bool,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// One long-lived TCP connection: a line every --interval-ms for
    /// --duration-ms, each answered by the same backend; reports failures.
    Hold {
        addr: SocketAddr,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// As many sequential transactions as fit in --duration-ms (at most --max).
    Rate {
        proto: Proto,
        addr: SocketAddr,
        /// More targets: the transactions go round-robin over ADDR and
        /// these (client-side balancing, the untranslated counterpart of a
        /// Service with that many endpoints).
        #[arg(long, value_delimiter = ',')]
        also: Vec<SocketAddr>,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 1_000_000)]
        max: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Remove namespaces, cgroups, bpffs mounts and /tmp dirs whose names start
    /// with --prefix (what crashed tests or benchmarks left); one line per object.
    Cleanup {
        #[arg(long, default_value = tests::NAME_PREFIX)]
        prefix: String,
    },
    /// A new TCP transaction every --interval-ms for --duration-ms.
    Stream {
        addr: SocketAddr,
        #[arg(long)]
        interval_ms: u64,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve {
            id,
            tcp,
            udp,
            bind,
            max_lifetime_s,
        } => serve(&id, &tcp, &udp, bind, max_lifetime_s),
        Cmd::Tcp {
            addr,
            count,
            timeout_ms,
            interval_ms,
        } => {
            let t = ms(timeout_ms);
            let mut tally = Tally::default();
            for i in 0..count {
                if i > 0 && interval_ms > 0 {
                    thread::sleep(ms(interval_ms));
                }
                tally.record(tcp_transaction(addr, t));
            }
            print_json(&tally.json(false));
            Ok(())
        }
        Cmd::Udp {
            addr,
            count,
            connected,
            reuse,
            reconnect,
            timeout_ms,
            interval_ms,
        } => {
            let t = ms(timeout_ms);
            let mut tally = Tally::default();
            let mut shared: Option<UdpSocket> = None;
            let mut sequence = Vec::new();
            for i in 0..count {
                if i > 0 && interval_ms > 0 {
                    thread::sleep(ms(interval_ms));
                }
                let r = udp_transaction(
                    addr,
                    connected,
                    t,
                    if reuse { Some(&mut shared) } else { None },
                );
                if reconnect {
                    sequence.push(match &r {
                        Ok(a) => a.id.clone(),
                        Err(e) => e.clone(),
                    });
                    if r.is_err() {
                        shared = None;
                    }
                }
                tally.record(r);
            }
            let mut out = tally.json(true);
            if reconnect {
                out["sequence"] = json!(sequence);
            }
            print_json(&out);
            Ok(())
        }
        Cmd::Hold {
            addr,
            interval_ms,
            duration_ms,
            timeout_ms,
        } => {
            print_json(&hold(addr, ms(interval_ms.max(1)), ms(duration_ms), ms(timeout_ms)));
            Ok(())
        }
        Cmd::Rate {
            proto,
            addr,
            also,
            duration_ms,
            max,
            timeout_ms,
        } => {
            let t = ms(timeout_ms);
            let mut tally = Tally::default();
            let start = Instant::now();
            let end = start + ms(duration_ms);
            let targets: Vec<SocketAddr> = std::iter::once(addr).chain(also).collect();
            let mut n = 0;
            while n < max && Instant::now() < end {
                #[expect(clippy::cast_possible_truncation, reason = "an index into a short list")]
                let addr = targets[(n % targets.len() as u64) as usize];
                let r = match proto {
                    Proto::Tcp => tcp_transaction(addr, t),
                    Proto::Udp => udp_transaction(addr, false, t, None),
                };
                tally.record(r);
                n += 1;
            }
            let elapsed = start.elapsed().as_secs_f64();
            #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let per_sec = if elapsed > 0.0 {
                tally.ok as f64 / elapsed
            } else {
                0.0
            };
            print_json(&json!({
                "ok": tally.ok,
                "errors": tally.errors,
                "elapsed_ms": (elapsed * 1000.0).round(),
                "per_sec": (per_sec * 10.0).round() / 10.0,
            }));
            Ok(())
        }
        Cmd::Cleanup { prefix } => cleanup(&prefix),
        Cmd::Stream {
            addr,
            interval_ms,
            duration_ms,
            timeout_ms,
        } => {
            let t = ms(timeout_ms);
            let interval = ms(interval_ms.max(1));
            let mut tally = Tally::default();
            let start = Instant::now();
            for k in 0..=(duration_ms / interval_ms.max(1)) {
                let Some(at) = u32::try_from(k).ok().and_then(|k| interval.checked_mul(k)) else {
                    break;
                };
                if at >= ms(duration_ms) {
                    break;
                }
                if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                tally.record(tcp_transaction(addr, t));
            }
            let failed: u64 = tally.errors.values().sum();
            print_json(&json!({
                "ok": tally.ok,
                "failed": failed,
                "errors": tally.errors,
                "by_id": tally.by_id,
            }));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cleanup(prefix: &str) -> Result<(), String> {
    if prefix.len() < 3 || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("cleanup prefix must be >= 3 alphanumeric characters, got {prefix:?}"));
    }
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("cleanup needs root (network namespaces, cgroups, mounts)".into());
    }
    let log = tests::cleanup_leftovers(prefix);
    if log.is_empty() {
        println!("nothing left over (prefix {prefix:?})");
    }
    for line in &log {
        println!("{line}");
    }
    if log.iter().any(|l| l.starts_with("error")) {
        return Err("some leftovers could not be removed (see above)".into());
    }
    Ok(())
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn print_json(v: &Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

// ---------------------------------------------------------------- server

fn serve(
    id: &str,
    tcp: &[u16],
    udp: &[u16],
    bind: Option<IpAddr>,
    max_lifetime_s: u64,
) -> Result<(), String> {
    if tcp.is_empty() && udp.is_empty() {
        return Err("nothing to serve: give --tcp PORT and/or --udp PORT".into());
    }
    let addrs: Vec<IpAddr> = match bind {
        Some(a) => vec![a],
        None => vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ],
    };
    let mut handles = Vec::new();
    for &port in tcp {
        for &ip in &addrs {
            let addr = SocketAddr::new(ip, port);
            match bound_socket(addr, libc::SOCK_STREAM) {
                Ok(fd) => {
                    let listener = TcpListener::from(fd);
                    let id = id.to_string();
                    handles.push(thread::spawn(move || tcp_accept_loop(&listener, &id)));
                }
                // Without --bind, a namespace with IPv6 disabled still gets IPv4.
                Err(e) if bind.is_none() && ip.is_ipv6() => {
                    eprintln!("sluice-probe: tcp {addr}: {e} (continuing)")
                }
                Err(e) => return Err(format!("tcp {addr}: {e}")),
            }
        }
    }
    for &port in udp {
        for &ip in &addrs {
            let addr = SocketAddr::new(ip, port);
            match bound_socket(addr, libc::SOCK_DGRAM) {
                Ok(fd) => {
                    let sock = UdpSocket::from(fd);
                    let id = id.to_string();
                    handles.push(thread::spawn(move || udp_loop(&sock, &id)));
                }
                Err(e) if bind.is_none() && ip.is_ipv6() => {
                    eprintln!("sluice-probe: udp {addr}: {e} (continuing)")
                }
                Err(e) => return Err(format!("udp {addr}: {e}")),
            }
        }
    }
    println!("ready");
    let _ = io::stdout().flush();
    thread::sleep(Duration::from_secs(max_lifetime_s));
    eprintln!("sluice-probe: --max-lifetime-s {max_lifetime_s} reached, exiting");
    Ok(())
}

/// A socket bound to `addr` (listening, for TCP). IPv6 sockets are V6ONLY so
/// that IPv4 clients reach the separate IPv4 socket and are seen unmapped.
fn bound_socket(addr: SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let one: libc::c_int = 1;
    let setopt = |fd: libc::c_int, level, name| {
        // SAFETY: valid fd and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const one).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let raw = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setopt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    let rc = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            // SAFETY: pointer and length describe `sa`.
            unsafe {
                libc::bind(
                    raw,
                    (&raw const sa).cast(),
                    mem::size_of_val(&sa) as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            setopt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_scope_id = a.scope_id();
            // SAFETY: pointer and length describe `sa`.
            unsafe {
                libc::bind(
                    raw,
                    (&raw const sa).cast(),
                    mem::size_of_val(&sa) as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our bound stream socket.
    if ty == libc::SOCK_STREAM && unsafe { libc::listen(raw, 4096) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn reply_text(id: &str, peer: SocketAddr) -> String {
    format!(
        "{id} {}\n",
        SocketAddr::new(peer.ip().to_canonical(), peer.port())
    )
}

fn tcp_accept_loop(listener: &TcpListener, id: &str) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let reply = reply_text(id, peer);
                thread::spawn(move || tcp_answer(stream, &reply));
            }
            Err(e) => {
                eprintln!("sluice-probe: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Reads one line (or until EOF/timeout: a client that sends nothing is still
/// answered), replies and closes. A first line `hold` instead keeps the
/// connection open and answers every further line (see `hold`).
fn tcp_answer(mut stream: TcpStream, reply: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 512];
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got += n;
                if buf[..got].contains(&b'\n') {
                    break;
                }
            }
        }
    }
    let _ = stream.write_all(reply.as_bytes());
    if buf[..got].starts_with(b"hold\n") {
        hold_answer(stream, reply);
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Answers every line with `reply` until EOF or 30 s without a line.
fn hold_answer(mut stream: TcpStream, reply: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let lines = buf[..n].iter().filter(|b| **b == b'\n').count();
                for _ in 0..lines {
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn udp_loop(sock: &UdpSocket, id: &str) {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = sock.send_to(reply_text(id, peer).as_bytes(), peer) {
                    eprintln!("sluice-probe: udp reply to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("sluice-probe: udp recv: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------- clients

/// One successful transaction: who answered, what source it saw, and the
/// addresses the client observed (getpeername / recvfrom).
struct Answer {
    id: String,
    seen_src: String,
    peer_name: Option<SocketAddr>,
    reply_from: Option<SocketAddr>,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
    by_id: BTreeMap<String, u64>,
    peer_names: BTreeMap<String, u64>,
    seen_src: BTreeMap<String, u64>,
    reply_from: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, r: Result<Answer, String>) {
        match r {
            Ok(a) => {
                self.ok += 1;
                *self.by_id.entry(a.id).or_default() += 1;
                // Keyed by address only: ports are ephemeral and would make one key per connection.
                let src = a
                    .seen_src
                    .parse::<SocketAddr>()
                    .map_or(a.seen_src, |s| s.ip().to_string());
                *self.seen_src.entry(src).or_default() += 1;
                if let Some(p) = a.peer_name {
                    *self.peer_names.entry(p.to_string()).or_default() += 1;
                }
                if let Some(p) = a.reply_from {
                    *self.reply_from.entry(p.to_string()).or_default() += 1;
                }
            }
            Err(e) => *self.errors.entry(e).or_default() += 1,
        }
    }

    fn json(&self, udp: bool) -> Value {
        let mut v = json!({
            "ok": self.ok,
            "errors": self.errors,
            "by_id": self.by_id,
            "peer_names": self.peer_names,
            "seen_src": self.seen_src,
        });
        if udp {
            v["reply_from"] = json!(self.reply_from);
        }
        v
    }
}

/// "ECONNREFUSED" etc. for OS errors; read timeouts (EAGAIN) count as ETIMEDOUT.
fn errno_text(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EAGAIN) => "ETIMEDOUT",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::ENETDOWN) => "ENETDOWN",
        Some(libc::EMSGSIZE) => "EMSGSIZE",
        Some(libc::ENOBUFS) => "ENOBUFS",
        Some(libc::EDESTADDRREQ) => "EDESTADDRREQ",
        Some(libc::ENOTCONN) => "ENOTCONN",
        Some(n) => return format!("errno{n}"),
        None => match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "ETIMEDOUT",
            io::ErrorKind::UnexpectedEof => "EOF",
            k => return format!("{k:?}"),
        },
    };
    name.to_string()
}

fn parse_reply(buf: &[u8]) -> Result<(String, String), String> {
    let text = String::from_utf8_lossy(buf);
    let line = text.lines().next().unwrap_or("");
    match line.split_once(' ') {
        Some((id, src)) if !id.is_empty() && !src.is_empty() => {
            Ok((id.to_string(), src.to_string()))
        }
        _ => Err(if buf.is_empty() {
            "read:EOF".to_string()
        } else {
            "bad_reply".to_string()
        }),
    }
}

/// connect (bounded by `timeout`), getpeername, write "hi\n", read the reply line.
/// Connect errors are reported bare ("ECONNREFUSED"), later ones prefixed by their step.
fn tcp_transaction(addr: SocketAddr, timeout: Duration) -> Result<Answer, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| errno_text(&e))?;
    let peer_name = s
        .peer_addr()
        .map_err(|e| format!("getpeername:{}", errno_text(&e)))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("setsockopt:{}", errno_text(&e)))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| format!("setsockopt:{}", errno_text(&e)))?;
    s.write_all(b"hi\n")
        .map_err(|e| format!("write:{}", errno_text(&e)))?;
    let mut buf = [0u8; 512];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if buf[..got].contains(&b'\n') {
                    break;
                }
            }
            Err(e) => return Err(format!("read:{}", errno_text(&e))),
        }
    }
    let (id, seen_src) = parse_reply(&buf[..got])?;
    Ok(Answer {
        id,
        seen_src,
        peer_name: Some(peer_name),
        reply_from: None,
    })
}

/// Reads one `\n`-terminated line (at most 512 bytes) byte by byte, so
/// nothing of the next answer is consumed.
fn read_line(s: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 512 {
        match s.read(&mut byte) {
            Ok(0) => return Err("read:EOF".into()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("read:{}", errno_text(&e))),
        }
    }
    Err("bad_reply".into())
}

/// One connection through `addr`: "hold\n", then "ping\n" every `interval`
/// until `duration` has passed, each answer read back. Stops at the first
/// failure (the connection is then broken) and reports it.
fn hold(addr: SocketAddr, interval: Duration, duration: Duration, timeout: Duration) -> Value {
    let mut by_id: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    let mut error: Option<String> = None;
    let start = Instant::now();
    let result = (|| -> Result<(), String> {
        let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| errno_text(&e))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| format!("setsockopt:{}", errno_text(&e)))?;
        s.set_write_timeout(Some(timeout)).map_err(|e| format!("setsockopt:{}", errno_text(&e)))?;
        s.write_all(b"hold\n").map_err(|e| format!("write:{}", errno_text(&e)))?;
        let mut first = true;
        // Bounded: one exchange per interval within the duration.
        let rounds = duration.as_millis() / interval.as_millis().max(1) + 1;
        for k in 0..rounds {
            if !first {
                let at = interval * u32::try_from(k).unwrap_or(u32::MAX);
                if at >= duration {
                    break;
                }
                if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                s.write_all(b"ping\n").map_err(|e| format!("write:{}", errno_text(&e)))?;
            }
            first = false;
            let line = read_line(&mut s)?;
            let (id, _) = parse_reply(line.as_bytes())?;
            *by_id.entry(id).or_default() += 1;
            ok += 1;
        }
        Ok(())
    })();
    if let Err(e) = result {
        error = Some(e);
    }
    json!({
        "ok": ok,
        "failed": u64::from(error.is_some()),
        "error": error,
        "by_id": by_id,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    })
}

fn udp_socket_for(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    UdpSocket::bind(local)
}

/// Sends "hi\n" and waits for one reply. `shared` (with --reuse) keeps one
/// socket across calls.
fn udp_transaction(
    addr: SocketAddr,
    connected: bool,
    timeout: Duration,
    shared: Option<&mut Option<UdpSocket>>,
) -> Result<Answer, String> {
    let fresh;
    let sock = match shared {
        Some(slot) => {
            if slot.is_none() {
                let s = udp_socket_for(addr).map_err(|e| format!("socket:{}", errno_text(&e)))?;
                if connected {
                    s.connect(addr).map_err(|e| errno_text(&e))?;
                }
                *slot = Some(s);
            }
            slot.as_ref().expect("just set")
        }
        None => {
            let s = udp_socket_for(addr).map_err(|e| format!("socket:{}", errno_text(&e)))?;
            if connected {
                s.connect(addr).map_err(|e| errno_text(&e))?;
            }
            fresh = s;
            &fresh
        }
    };
    // A socket the kernel aborted (SOCK_DESTROY) carries ECONNABORTED until
    // read: report it as this operation's result, as a blocked recv would.
    if let Some(e) = sock
        .take_error()
        .map_err(|e| format!("getsockopt:{}", errno_text(&e)))?
    {
        return Err(errno_text(&e));
    }
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| format!("setsockopt:{}", errno_text(&e)))?;
    let mut buf = [0u8; 2048];
    if connected {
        sock.send(b"hi\n")
            .map_err(|e| format!("send:{}", errno_text(&e)))?;
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("recv:{}", errno_text(&e)))?;
        let peer = sock
            .peer_addr()
            .map_err(|e| format!("getpeername:{}", errno_text(&e)))?;
        let (id, seen_src) = parse_reply(&buf[..n])?;
        Ok(Answer {
            id,
            seen_src,
            peer_name: Some(peer),
            reply_from: Some(peer),
        })
    } else {
        sock.send_to(b"hi\n", addr)
            .map_err(|e| format!("send:{}", errno_text(&e)))?;
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("recv:{}", errno_text(&e)))?;
        let (id, seen_src) = parse_reply(&buf[..n])?;
        Ok(Answer {
            id,
            seen_src,
            peer_name: None,
            reply_from: Some(from),
        })
    }
}
