//! probe: the test client and backend server, run inside test namespaces.
//!
//! Server:  probe serve --name N --tcp IP:PORT[,…] --udp IP:PORT[,…]
//!                [--exit-on-stdin-eof] [--max-lifetime-s S] [--echo-peer]
//!          (--echo-peer: TCP answers are `<name> <client-ip>`, the address
//!          the server sees as the connection's peer)
//! Clients (print one JSON object on stdout, assert nothing themselves):
//!   probe tcp --to IP:PORT --count N [--timeout-ms T]
//!   probe udp --to IP:PORT --count N [--timeout-ms T]
//!   probe udp-connected --to IP:PORT [--timeout-ms T]
//!   probe tcp-connect-time --to IP:PORT [--timeout-ms T]
//!   probe hold --to IP:PORT [--timeout-ms T] [--udp]
//!   probe loop --to IP:PORT --interval-ms I --duration-ms D [--timeout-ms T]
//!
//! `--to` may also be `[::ffff:a.b.c.d]:PORT`: the client then uses an
//! AF_INET6 socket addressing an IPv4-mapped address, as the JVM and .NET
//! do; peers and reply sources print as `[::ffff:a.b.c.d]:PORT`.
//!
//! Std only (plus serde_json): it must start fast and behave the same in
//! every namespace. Every network operation has a timeout (default 2 s) and
//! every loop is bounded, so a broken datapath fails a test instead of
//! hanging it. Addresses are literal IP:PORT (no name resolution).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// Errors kept verbatim in reports.
const MAX_ERRORS: usize = 10;
/// Failure timestamps kept in reports.
const MAX_FAILED_AT: usize = 10_000;
/// Upper bounds for client loops.
const MAX_COUNT: u64 = 1_000_000;
const MAX_DURATION_MS: u64 = 600_000;
/// A server connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP: time to wait for the rest of a request once it started.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// Concurrent server connections; more are closed at once.
const MAX_CONNS: usize = 4096;

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("usage: probe serve|tcp|udp|udp-connected|tcp-connect-time|hold|loop [--opts]");
        return ExitCode::from(2);
    };
    let result = match mode.as_str() {
        "serve" => serve(rest),
        "tcp" => tcp(rest),
        "udp" => udp(rest),
        "udp-connected" => udp_connected(rest),
        "tcp-connect-time" => tcp_connect_time(rest),
        "hold" => hold(rest),
        "loop" => tcp_loop(rest),
        other => Err(format!("unknown mode {other:?}")),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("probe {mode}: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------- options

struct Opts {
    values: HashMap<String, String>,
    flags: BTreeSet<String>,
}

impl Opts {
    /// `--key value` pairs; `flags` take no value. Unknown options fail.
    fn parse(args: &[String], keys: &[&str], flags: &[&str]) -> Res<Opts> {
        let mut o = Opts {
            values: HashMap::new(),
            flags: BTreeSet::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(k) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            if flags.contains(&k) {
                o.flags.insert(k.to_string());
            } else if keys.contains(&k) {
                let v = it.next().ok_or_else(|| format!("--{k} needs a value"))?;
                o.values.insert(k.to_string(), v.clone());
            } else {
                return Err(format!("unknown option --{k}"));
            }
        }
        Ok(o)
    }

    fn req(&self, k: &str) -> Res<&str> {
        self.values
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("--{k} is required"))
    }

    fn u64_or(&self, k: &str, default: u64) -> Res<u64> {
        match self.values.get(k) {
            Some(v) => v.parse().map_err(|_| format!("--{k}: not a number: {v:?}")),
            None => Ok(default),
        }
    }

    fn addr(&self, k: &str) -> Res<SocketAddr> {
        let v = self.req(k)?;
        v.parse()
            .map_err(|_| format!("--{k}: not an IP:PORT address: {v:?}"))
    }

    fn addrs(&self, k: &str) -> Res<Vec<SocketAddr>> {
        match self.values.get(k) {
            None => Ok(Vec::new()),
            Some(v) => v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|_| format!("--{k}: not an IP:PORT address: {s:?}"))
                })
                .collect(),
        }
    }

    fn timeout(&self) -> Res<Duration> {
        let ms = self
            .u64_or("timeout-ms", DEFAULT_TIMEOUT_MS)?
            .clamp(1, 60_000);
        Ok(Duration::from_millis(ms))
    }
}

fn print_json(v: &serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ----------------------------------------------------------------- server

fn serve(args: &[String]) -> Res<u8> {
    let o = Opts::parse(
        args,
        &["name", "tcp", "udp", "max-lifetime-s"],
        &["exit-on-stdin-eof", "echo-peer"],
    )?;
    let name = o.req("name")?.to_string();
    let echo_peer = o.flags.contains("echo-peer");
    let tcp = o.addrs("tcp")?;
    let udp = o.addrs("udp")?;
    if tcp.is_empty() && udp.is_empty() {
        return Err("give --tcp and/or --udp".into());
    }
    let lifetime = Duration::from_secs(o.u64_or("max-lifetime-s", 3600)?);

    // Bind everything before saying "ready", so the harness can connect as
    // soon as it reads that line.
    let mut listeners = Vec::new();
    for a in &tcp {
        listeners.push(TcpListener::bind(a).map_err(|e| format!("bind tcp {a}: {e}"))?);
    }
    let mut sockets = Vec::new();
    for a in &udp {
        sockets.push(UdpSocket::bind(a).map_err(|e| format!("bind udp {a}: {e}"))?);
    }
    let reply: Arc<str> = Arc::from(format!("{name}\n"));
    let conns = Arc::new(AtomicUsize::new(0));
    for l in listeners {
        let (reply, conns) = (reply.clone(), conns.clone());
        thread::spawn(move || accept_loop(l, reply, echo_peer, conns));
    }
    for s in sockets {
        let name = name.clone();
        thread::spawn(move || udp_loop(s, &name));
    }
    print_line("ready");
    eprintln!("probe serve {name}: tcp {tcp:?} udp {udp:?}");

    if o.flags.contains("exit-on-stdin-eof") {
        // The harness holds our stdin: EOF means it is gone.
        thread::spawn(|| {
            let mut sink = [0u8; 256];
            let mut stdin = io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    }
    // The main thread bounds the server's life.
    thread::sleep(lifetime);
    Ok(0)
}

fn print_line(s: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// `reply` is `<name>\n`; with `echo_peer` each connection answers
/// `<name> <peer-ip>\n` instead.
fn accept_loop(l: TcpListener, reply: Arc<str>, echo_peer: bool, conns: Arc<AtomicUsize>) {
    for conn in l.incoming() {
        match conn {
            Ok(s) => {
                if conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
                    conns.fetch_sub(1, Ordering::SeqCst);
                    continue; // dropped: closed
                }
                let reply: Arc<str> = match (echo_peer, s.peer_addr()) {
                    (true, Ok(peer)) => Arc::from(format!("{} {}\n", reply.trim_end(), peer.ip())),
                    _ => reply.clone(),
                };
                let conns = conns.clone();
                thread::spawn(move || {
                    let _ = handle_conn(s, &reply);
                    conns.fetch_sub(1, Ordering::SeqCst);
                });
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads more into `buf`; Ok(false) on EOF.
fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

const HTTP_METHODS: [&[u8]; 5] = [b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE"];

fn handle_conn(mut s: TcpStream, reply: &str) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(IDLE_TIMEOUT))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    // Enough bytes to tell HTTP from the line protocol.
    while buf.len() < 4 && !buf.contains(&b'\n') {
        if !fill(&mut s, &mut buf)? {
            return Ok(());
        }
    }
    if HTTP_METHODS.iter().any(|m| buf.starts_with(m)) {
        serve_http(s, buf, reply)
    } else {
        serve_lines(s, buf, reply)
    }
}

/// Line protocol: every line gets `<name>\n`.
fn serve_lines(mut s: TcpStream, mut buf: Vec<u8>, reply: &str) -> io::Result<()> {
    loop {
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            buf.drain(..=pos);
            s.write_all(reply.as_bytes())?;
        }
        if buf.len() > 65536 {
            buf.clear(); // a "line" this long is garbage; don't grow forever
        }
        if !fill(&mut s, &mut buf)? {
            return Ok(());
        }
    }
}

/// HTTP/1.x: `200 OK` with the name as body; keep-alive as the request's
/// version and Connection header say (HTTP/1.0 closes by default).
fn serve_http(mut s: TcpStream, mut buf: Vec<u8>, reply: &str) -> io::Result<()> {
    loop {
        // Wait for the end of the headers, at most REQUEST_TIMEOUT after the
        // request started (clients that never send the blank line get an
        // answer anyway).
        let started = Instant::now();
        let end = loop {
            if let Some(e) = header_end(&buf) {
                break e;
            }
            let left = REQUEST_TIMEOUT.saturating_sub(started.elapsed());
            if left.is_zero() || buf.len() > 65536 {
                break buf.len();
            }
            s.set_read_timeout(Some(left))?;
            match fill(&mut s, &mut buf) {
                Ok(true) => {}
                Ok(false) => {
                    if buf.is_empty() {
                        return Ok(());
                    }
                    break buf.len();
                }
                Err(e) if is_timeout(&e) => break buf.len(),
                Err(e) => return Err(e),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let first = head.lines().next().unwrap_or("");
        let http11 = first.ends_with("http/1.1");
        let conn_hdr = head
            .lines()
            .find_map(|l| l.strip_prefix("connection:"))
            .map(|v| v.trim().to_string());
        let keep_alive = match conn_hdr.as_deref() {
            Some("close") => false,
            Some("keep-alive") => true,
            _ => http11,
        };
        let body = if first.starts_with("head") { "" } else { reply };
        let resp = format!(
            "HTTP/1.{} 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}",
            if http11 { 1 } else { 0 },
            reply.len(),
            if keep_alive { "keep-alive" } else { "close" },
            body
        );
        s.write_all(resp.as_bytes())?;
        if !keep_alive {
            let _ = s.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        // Next request: wait up to the idle timeout for its first byte.
        if buf.is_empty() {
            s.set_read_timeout(Some(IDLE_TIMEOUT))?;
            if !fill(&mut s, &mut buf)? {
                return Ok(());
            }
        }
    }
}

/// Index just past the blank line ending the headers.
fn header_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn udp_loop(s: UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        match s.recv_from(&mut buf) {
            Ok((_, from)) => {
                let _ = s.send_to(name.as_bytes(), from);
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

// ---------------------------------------------------------------- clients

/// Results of many TCP attempts (shared by `tcp` and `loop`).
struct Tally {
    start: Instant,
    ok: u64,
    failed: u64,
    by_backend: BTreeMap<String, u64>,
    errors: Vec<String>,
    failed_at_ms: Vec<u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            start: Instant::now(),
            ok: 0,
            failed: 0,
            by_backend: BTreeMap::new(),
            errors: Vec::new(),
            failed_at_ms: Vec::new(),
        }
    }

    fn record(&mut self, at: Duration, r: Res<String>) {
        match r {
            Ok(name) => {
                self.ok += 1;
                *self.by_backend.entry(name).or_insert(0) += 1;
            }
            Err(e) => {
                self.failed += 1;
                let t = at.as_millis() as u64;
                if self.errors.len() < MAX_ERRORS {
                    self.errors.push(format!("t={t}ms: {e}"));
                }
                if self.failed_at_ms.len() < MAX_FAILED_AT {
                    self.failed_at_ms.push(t);
                }
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "ok": self.ok,
            "failed": self.failed,
            "by_backend": self.by_backend,
            "errors": self.errors,
            "failed_at_ms": self.failed_at_ms,
            "elapsed_ms": ms(self.start.elapsed()),
        })
    }
}

fn tcp(args: &[String]) -> Res<u8> {
    let o = Opts::parse(args, &["to", "count", "timeout-ms"], &[])?;
    let to = o.addr("to")?;
    let count = o.u64_or("count", 1)?.min(MAX_COUNT);
    let timeout = o.timeout()?;
    let mut t = Tally::new();
    for _ in 0..count {
        let at = t.start.elapsed();
        t.record(at, http_get(to, timeout));
    }
    print_json(&t.json());
    Ok(0)
}

fn tcp_loop(args: &[String]) -> Res<u8> {
    let o = Opts::parse(
        args,
        &["to", "interval-ms", "duration-ms", "timeout-ms"],
        &[],
    )?;
    let to = o.addr("to")?;
    let interval = Duration::from_millis(o.u64_or("interval-ms", 100)?.max(1));
    let duration = Duration::from_millis(o.u64_or("duration-ms", 1000)?.min(MAX_DURATION_MS));
    let timeout = o.timeout()?;
    let mut t = Tally::new();
    let mut n: u32 = 0;
    while t.start.elapsed() < duration && u64::from(n) < MAX_COUNT {
        let at = t.start.elapsed();
        t.record(at, http_get(to, timeout));
        n += 1;
        let next = interval * n;
        let now = t.start.elapsed();
        if next > now {
            thread::sleep((next - now).min(duration.saturating_sub(now)));
        }
    }
    print_json(&t.json());
    Ok(0)
}

/// One fresh connection, `GET / HTTP/1.0`; the first body line is the
/// backend's name.
fn http_get(to: SocketAddr, timeout: Duration) -> Res<String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\nUser-Agent: probe\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = header_end(&buf) {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                if buf.len() >= end + len {
                    return parse_response(&buf, end);
                }
            }
        }
        if start.elapsed() > timeout * 2 || buf.len() > 1 << 20 {
            return Err("response too slow or too large".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return if header_end(&buf).is_some() {
                    parse_response(&buf, header_end(&buf).unwrap_or(buf.len()))
                } else {
                    Err(format!(
                        "connection closed after {} bytes without a response",
                        buf.len()
                    ))
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn parse_response(buf: &[u8], end: usize) -> Res<String> {
    let text = String::from_utf8_lossy(buf);
    let status = text.lines().next().unwrap_or("");
    if !(status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200")) {
        return Err(format!("bad status line {status:?}"));
    }
    let body = String::from_utf8_lossy(&buf[end.min(buf.len())..]);
    let name = body.lines().next().unwrap_or("").trim().to_string();
    if name.is_empty() {
        return Err("empty body".into());
    }
    Ok(name)
}

fn udp(args: &[String]) -> Res<u8> {
    let o = Opts::parse(args, &["to", "count", "timeout-ms", "bind-port"], &[])?;
    let to = o.addr("to")?;
    let count = o.u64_or("count", 1)?.min(MAX_COUNT);
    let timeout = o.timeout()?;
    // A fixed source port makes consecutive runs one flow for conntrack.
    let bind_port = o.u64_or("bind-port", 0)?;
    let start = Instant::now();
    // One unconnected socket for all datagrams: sendmsg4/recvmsg4 are what
    // translate here, per datagram.
    let s = UdpSocket::bind((
        any_addr(to),
        u16::try_from(bind_port).map_err(|_| "bad --bind-port")?,
    ))
    .map_err(|e| format!("bind: {e}"))?;
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut by_backend: BTreeMap<String, u64> = BTreeMap::new();
    let mut sources: BTreeSet<String> = BTreeSet::new();
    let mut errors: Vec<String> = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..count {
        // Drop late replies to earlier queries so they are not counted twice.
        if s.set_nonblocking(true).is_ok() {
            for _ in 0..1024 {
                if s.recv_from(&mut buf).is_err() {
                    break;
                }
            }
            let _ = s.set_nonblocking(false);
        }
        let _ = s.set_read_timeout(Some(timeout));
        let t = start.elapsed().as_millis();
        let r = s
            .send_to(format!("q{i}").as_bytes(), to)
            .map_err(|e| format!("sendto: {e}"))
            .and_then(|_| {
                s.recv_from(&mut buf).map_err(|e| {
                    if is_timeout(&e) {
                        format!("recvfrom: no reply within {timeout:?}")
                    } else {
                        format!("recvfrom: {e}")
                    }
                })
            });
        match r {
            Ok((n, from)) => {
                ok += 1;
                sources.insert(from.to_string());
                let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                *by_backend.entry(name).or_insert(0) += 1;
            }
            Err(e) => {
                failed += 1;
                if errors.len() < MAX_ERRORS {
                    errors.push(format!("t={t}ms: {e}"));
                }
            }
        }
    }
    print_json(&json!({
        "ok": ok,
        "failed": failed,
        "by_backend": by_backend,
        "sources": sources,
        "errors": errors,
        "elapsed_ms": ms(start.elapsed()),
    }));
    Ok(0)
}

/// The wildcard address of `to`'s family: a UDP socket bound to `::` is an
/// AF_INET6 one (dual-stack), which can reach IPv4-mapped addresses.
fn any_addr(to: SocketAddr) -> std::net::IpAddr {
    match to {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn udp_connected(args: &[String]) -> Res<u8> {
    let o = Opts::parse(args, &["to", "timeout-ms"], &[])?;
    let to = o.addr("to")?;
    let timeout = o.timeout()?;
    let mut peer = None;
    let mut local = None;
    let r = (|| -> Res<String> {
        let s = UdpSocket::bind((any_addr(to), 0)).map_err(|e| format!("bind: {e}"))?;
        s.connect(to).map_err(|e| format!("connect: {e}"))?;
        peer = s.peer_addr().ok().map(|a| a.to_string());
        local = s.local_addr().ok().map(|a| a.to_string());
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.send(b"q").map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 2048];
        let n = s.recv(&mut buf).map_err(|e| {
            if is_timeout(&e) {
                format!("recv: no reply within {timeout:?}")
            } else {
                format!("recv: {e}")
            }
        })?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })();
    let (ok, reply, error) = match r {
        Ok(x) => (true, Some(x), None),
        Err(e) => (false, None, Some(e)),
    };
    print_json(&json!({"ok": ok, "peer": peer, "local": local, "reply": reply, "error": error}));
    Ok(0)
}

fn tcp_connect_time(args: &[String]) -> Res<u8> {
    let o = Opts::parse(args, &["to", "timeout-ms"], &[])?;
    let to = o.addr("to")?;
    let timeout = o.timeout()?;
    let start = Instant::now();
    let r = TcpStream::connect_timeout(&to, timeout);
    let elapsed = ms(start.elapsed());
    let v = match r {
        Ok(s) => json!({
            "ok": true, "error": null, "errno": null, "elapsed_ms": elapsed,
            "peer": s.peer_addr().ok().map(|a| a.to_string()),
        }),
        Err(e) => json!({
            "ok": false, "error": e.to_string(), "errno": e.raw_os_error(),
            "elapsed_ms": elapsed, "peer": null,
        }),
    };
    print_json(&v);
    Ok(0)
}

/// One connection; `CONNECTED <peer> <local>` first, then for every stdin
/// line one `ping\n` exchange, printing the answer or `ERR <e>`.
fn hold(args: &[String]) -> Res<u8> {
    let o = Opts::parse(args, &["to", "timeout-ms"], &["udp"])?;
    let to = o.addr("to")?;
    let timeout = o.timeout()?;
    if o.flags.contains("udp") {
        return hold_udp(to, timeout);
    }
    let mut out = io::stdout().lock();
    let s = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => return connect_failed(&mut out, &e),
    };
    connected(&mut out, s.peer_addr(), s.local_addr())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    let mut reader = io::BufReader::new(s);
    ping_loop(&mut out, || {
        writer
            .write_all(b"ping\n")
            .map_err(|e| format!("write: {e}"))
            .and_then(|()| {
                let mut l = String::new();
                match reader.read_line(&mut l) {
                    Ok(0) => Err("connection closed by peer".to_string()),
                    Ok(_) => Ok(l.trim_end().to_string()),
                    Err(e) => Err(format!("read: {e}")),
                }
            })
    })
}

/// `hold --udp`: one connected UDP socket, as a resolver keeps one. A
/// failed ping prints `ERR …` and the socket is replaced by a new one,
/// connected to the same address, as a resolver would after an error.
fn hold_udp(to: SocketAddr, timeout: Duration) -> Res<u8> {
    let connect = || -> io::Result<UdpSocket> {
        let s = UdpSocket::bind((any_addr(to), 0))?;
        s.connect(to)?;
        s.set_read_timeout(Some(timeout))?;
        Ok(s)
    };
    let mut out = io::stdout().lock();
    let mut s = match connect() {
        Ok(s) => s,
        Err(e) => return connect_failed(&mut out, &e),
    };
    connected(&mut out, s.peer_addr(), s.local_addr())?;
    ping_loop(&mut out, || {
        let mut buf = [0u8; 2048];
        let answer = s
            .send(b"ping")
            .map_err(|e| format!("send: {e}"))
            .and_then(|_| s.recv(&mut buf).map_err(|e| format!("recv: {e}")))
            .map(|n| String::from_utf8_lossy(&buf[..n]).trim().to_string());
        if answer.is_err() {
            s = connect().map_err(|e| format!("reconnect: {e}"))?;
        }
        answer
    })
}

/// `hold` could not connect: says so, exits 1.
fn connect_failed(out: &mut impl Write, e: &io::Error) -> Res<u8> {
    let _ = writeln!(out, "ERR connect: {e}");
    let _ = out.flush();
    Ok(1)
}

fn connected(
    out: &mut impl Write,
    peer: io::Result<SocketAddr>,
    local: io::Result<SocketAddr>,
) -> Res<()> {
    let peer = peer.map(|a| a.to_string()).unwrap_or_default();
    let local = local.map(|a| a.to_string()).unwrap_or_default();
    writeln!(out, "CONNECTED {peer} {local}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
}

/// Answers each stdin line with one ping's answer, or `ERR …`.
fn ping_loop(out: &mut impl Write, mut ping: impl FnMut() -> Res<String>) -> Res<u8> {
    let stdin = io::stdin();
    for (n, line) in stdin.lock().lines().enumerate() {
        if line.is_err() || n as u64 >= MAX_COUNT {
            break;
        }
        match ping() {
            Ok(a) => writeln!(out, "{a}"),
            Err(e) => writeln!(out, "ERR {e}"),
        }
        .map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = Opts::parse(
            &args("--to 10.96.0.10:80 --count 3 --flag"),
            &["to", "count"],
            &["flag"],
        )
        .unwrap();
        assert_eq!(o.addr("to").unwrap().to_string(), "10.96.0.10:80");
        assert_eq!(o.u64_or("count", 1).unwrap(), 3);
        assert_eq!(o.u64_or("missing", 7).unwrap(), 7);
        assert!(o.flags.contains("flag"));
        assert!(Opts::parse(&args("--nope 1"), &["to"], &[]).is_err());
        assert!(Opts::parse(&args("--to"), &["to"], &[]).is_err());
        assert!(Opts::parse(&args("stray"), &["to"], &[]).is_err());
        let o = Opts::parse(&args("--tcp 10.0.0.1:1,10.0.0.2:2"), &["tcp"], &[]).unwrap();
        assert_eq!(o.addrs("tcp").unwrap().len(), 2);
        let o = Opts::parse(&args("--to web:80"), &["to"], &[]).unwrap();
        assert!(o.addr("to").is_err(), "no name resolution");
    }

    #[test]
    fn headers_end() {
        assert_eq!(header_end(b"GET / HTTP/1.0\r\n\r\nrest"), Some(18));
        assert_eq!(header_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(header_end(b"GET / HTTP/1.0\r\n"), None);
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nbackend-2\n";
        let end = header_end(r).unwrap();
        assert_eq!(parse_response(r, end).unwrap(), "backend-2");
        let bad = b"HTTP/1.0 503 Unavailable\r\n\r\n";
        assert!(parse_response(bad, header_end(bad).unwrap()).is_err());
        let empty = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(empty, header_end(empty).unwrap()).is_err());
    }
}
