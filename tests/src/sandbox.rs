//! A self-contained "node" for end-to-end tests: a client namespace in a test
//! cgroup, a backend namespace with one address and one `probe serve` per
//! backend, a private bpffs and a manifest directory.
//!
//! ```text
//!  client netns bpfpt-<pid>-c              backend netns bpfpt-<pid>-b
//!  (clients run in cgroup bpfpt-<pid>-c)
//!  10.200.0.1/24  ===== veth =====  10.200.0.2/24 backend-1
//!                                   10.200.0.3/24 backend-2 …
//! ```
//!
//! No namespace has a default route: a ClusterIP that is not translated has
//! no route and the packet dies inside the sandbox. Everything is removed on
//! drop, in reverse order of creation.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::agent::{Agent, AgentConfig};
use crate::bpffs::PrivateBpffs;
use crate::cgroup::TestCgroup;
use crate::netns::Netns;
use crate::probe_server::{line_reader, ProbeServer};
use crate::process::{self, Output};
use crate::reports::{ConnectTimeReport, TcpReport, UdpConnectedReport, UdpReport};
use crate::veth::VethPair;

/// The client's address.
pub const CLIENT_IP: &str = "10.200.0.1";
/// The sandbox subnet's prefix length.
pub const PREFIX_LEN: u8 = 24;

/// Sandboxes created by this process so far.
static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Default timeout for one client command.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to build.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Number of backends (`backend-1` at 10.200.0.2, …), 1..=250.
    pub backends: usize,
    /// TCP ports every backend listens on.
    pub tcp_ports: Vec<u16>,
    /// UDP ports every backend answers on.
    pub udp_ports: Vec<u16>,
    /// The probe binary; `None`: [`crate::paths::probe_bin`]. Integration
    /// tests of this crate pass `env!("CARGO_BIN_EXE_probe")`.
    pub probe_bin: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            backends: 3,
            tcp_ports: vec![8080, 9090],
            udp_ports: vec![5353],
            probe_bin: None,
        }
    }
}

impl SandboxConfig {
    /// The default ports (TCP 8080, 9090; UDP 5353) with `n` backends.
    pub fn with_backends(n: usize) -> Self {
        SandboxConfig {
            backends: n,
            ..Default::default()
        }
    }
}

/// See the module documentation. Fields drop in declaration order, which is
/// the reverse of creation.
#[derive(Debug)]
pub struct Sandbox {
    servers: Vec<Option<ProbeServer>>,
    veth: VethPair,
    backend_ns: Netns,
    client_ns: Netns,
    bpffs: PrivateBpffs,
    cgroup: TestCgroup,
    work: tempfile::TempDir,
    cfg: SandboxConfig,
    probe: PathBuf,
}

impl Sandbox {
    /// `n` backends, TCP 8080 and 9090, UDP 5353.
    pub fn new(n_backends: usize) -> Result<Self> {
        Self::with_config(SandboxConfig::with_backends(n_backends))
    }

    pub fn with_config(cfg: SandboxConfig) -> Result<Self> {
        crate::privilege::require_root()?;
        if cfg.backends == 0 || cfg.backends > 250 {
            bail!("a sandbox has 1..=250 backends, not {}", cfg.backends);
        }
        if cfg.tcp_ports.is_empty() && cfg.udp_ports.is_empty() {
            bail!("a sandbox needs at least one TCP or UDP port");
        }
        let probe = match &cfg.probe_bin {
            Some(p) => p.clone(),
            None => crate::paths::probe_bin()?,
        };
        let work = tempfile::Builder::new()
            .prefix(&format!("bpfpt-{}-work-", std::process::id()))
            .tempdir()
            .context("creating the sandbox work directory")?;
        for sub in ["source", "logs"] {
            std::fs::create_dir(work.path().join(sub))
                .with_context(|| format!("creating {}/{sub}", work.path().display()))?;
        }
        // The first sandbox of a process is bpfpt-<pid>-c / -b; more
        // sandboxes in the same process (cargo test threads) get a number.
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let tag = if n == 0 { String::new() } else { n.to_string() };
        let cgroup = TestCgroup::new(&format!("c{tag}"))?;
        let bpffs = PrivateBpffs::new(&format!("bpf{tag}"))?;
        let client_ns = Netns::new(&format!("c{tag}"))?;
        let backend_ns = Netns::new(&format!("b{tag}"))?;
        let client_addr = format!("{CLIENT_IP}/{PREFIX_LEN}");
        let backend_addrs: Vec<String> = (1..=cfg.backends)
            .map(|i| format!("{}/{PREFIX_LEN}", backend_ip(i)))
            .collect();
        let backend_refs: Vec<&str> = backend_addrs.iter().map(String::as_str).collect();
        let veth = VethPair::new(&client_ns, &[&client_addr], &backend_ns, &backend_refs)?;
        let mut sb = Sandbox {
            servers: Vec::new(),
            veth,
            backend_ns,
            client_ns,
            bpffs,
            cgroup,
            work,
            cfg,
            probe,
        };
        for i in 1..=sb.cfg.backends {
            let s = sb.spawn_server(i)?;
            sb.servers.push(Some(s));
        }
        Ok(sb)
    }

    fn spawn_server(&self, i: usize) -> Result<ProbeServer> {
        let name = backend_name(i);
        ProbeServer::start(
            &self.backend_ns,
            &self.probe,
            &name,
            &backend_ip(i),
            &self.cfg.tcp_ports,
            &self.cfg.udp_ports,
            &self.log_dir().join(format!("{name}.log")),
        )
    }

    // ---- what is where ----

    pub fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    pub fn client_ns(&self) -> &Netns {
        &self.client_ns
    }

    pub fn backend_ns(&self) -> &Netns {
        &self.backend_ns
    }

    /// The cgroup clients run in (the agent's `--cgroup`).
    pub fn cgroup(&self) -> &TestCgroup {
        &self.cgroup
    }

    /// The private bpffs mount (the agent's `--bpffs`).
    pub fn bpffs(&self) -> &Path {
        self.bpffs.path()
    }

    /// The manifest directory (the agent's `--source`).
    pub fn source_dir(&self) -> PathBuf {
        self.work.path().join("source")
    }

    /// Server and agent logs.
    pub fn log_dir(&self) -> PathBuf {
        self.work.path().join("logs")
    }

    pub fn probe_bin(&self) -> &Path {
        &self.probe
    }

    pub fn veth(&self) -> &VethPair {
        &self.veth
    }

    pub fn client_ip(&self) -> &'static str {
        CLIENT_IP
    }

    pub fn backend_count(&self) -> usize {
        self.cfg.backends
    }

    /// Address of backend `i` (1-based): 10.200.0.(i+1).
    pub fn backend_ip(&self, i: usize) -> String {
        backend_ip(i)
    }

    /// Addresses of all backends, backend-1 first.
    pub fn backend_ips(&self) -> Vec<String> {
        (1..=self.cfg.backends).map(backend_ip).collect()
    }

    /// What backend `i` answers: `backend-<i>`.
    pub fn backend_name(&self, i: usize) -> String {
        backend_name(i)
    }

    pub fn backend_names(&self) -> Vec<String> {
        (1..=self.cfg.backends).map(backend_name).collect()
    }

    /// `ip:port` of every backend for `port`, as `bpfproxy dump` lists them.
    pub fn backend_addrs(&self, port: u16) -> Vec<String> {
        self.backend_ips()
            .into_iter()
            .map(|ip| format!("{ip}:{port}"))
            .collect()
    }

    /// Kills backend `i`'s server (its address stays: connections are
    /// refused, datagrams unanswered).
    pub fn stop_backend(&mut self, i: usize) -> Result<()> {
        let slot = self
            .servers
            .get_mut(i.wrapping_sub(1))
            .with_context(|| format!("no backend {i}"))?;
        slot.take();
        Ok(())
    }

    /// Starts backend `i`'s server again after [`Sandbox::stop_backend`].
    pub fn start_backend(&mut self, i: usize) -> Result<()> {
        if i == 0 || i > self.servers.len() {
            bail!("no backend {i}");
        }
        let s = self.spawn_server(i)?;
        self.servers[i - 1] = Some(s);
        Ok(())
    }

    // ---- manifests ----

    /// Writes `source/<name>` atomically (temporary file, then rename), so
    /// the agent never reads half a file.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> Result<()> {
        crate::manifest::write_file(&self.source_dir(), name, yaml)
    }

    /// Removes `source/<name>` (missing is fine).
    pub fn remove_manifest(&self, name: &str) -> Result<()> {
        crate::manifest::remove_file(&self.source_dir(), name)
    }

    // ---- the agent ----

    /// How to run the agent on this sandbox: its cgroup, bpffs and source
    /// dir, inside the client namespace (so its metrics listener is private),
    /// logging to `logs/agent.log`, node name `bpfpt-node`.
    pub fn agent_config(&self) -> Result<AgentConfig> {
        let mut c = AgentConfig::new(&self.source_dir(), self.cgroup.path(), self.bpffs())?;
        c.netns = Some(self.client_ns.path().to_path_buf());
        c.log_dir = Some(self.log_dir());
        c.node_name = Some("bpfpt-node".to_string());
        Ok(c)
    }

    /// Starts the agent with [`Sandbox::agent_config`].
    pub fn start_agent(&self) -> Result<Agent> {
        Agent::start(self.agent_config()?)
    }

    // ---- clients ----

    /// A command that runs in the client namespace and cgroup.
    pub fn client_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        self.client_ns.command_in_cgroup(program, &self.cgroup)
    }

    /// Runs `args` as a client (60 s limit); fails on a non-zero exit;
    /// returns stdout.
    pub fn client(&self, args: &[&str]) -> Result<String> {
        let mut c = self.client_args(args)?;
        process::run_with_timeout(&mut c, CLIENT_TIMEOUT)
    }

    /// Runs `args` as a client; status and outputs whatever the exit code.
    pub fn client_output(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut c = self.client_args(args)?;
        process::output_with_timeout(&mut c, timeout)
    }

    fn client_args(&self, args: &[&str]) -> Result<Command> {
        let Some((prog, rest)) = args.split_first() else {
            bail!("empty command line");
        };
        let mut c = self.client_command(prog)?;
        c.args(rest);
        Ok(c)
    }

    /// Runs `probe ARGS` as a client and parses its JSON.
    pub fn probe<T: DeserializeOwned>(&self, args: &[&str], timeout: Duration) -> Result<T> {
        let mut c = self.client_command(&self.probe)?;
        c.args(args);
        let shown = process::describe(&c);
        let out = process::run_with_timeout(&mut c, timeout)?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing the output of `{shown}`: {out}"))
    }

    /// `count` fresh TCP connections to `to` (`ip:port`), one HTTP GET each.
    pub fn probe_tcp(&self, to: &str, count: u32) -> Result<TcpReport> {
        let n = count.to_string();
        self.probe(&["tcp", "--to", to, "--count", &n], budget(count, 4))
    }

    /// `count` datagrams from one unconnected UDP socket to `to`.
    pub fn probe_udp(&self, to: &str, count: u32) -> Result<UdpReport> {
        let n = count.to_string();
        self.probe(&["udp", "--to", to, "--count", &n], budget(count, 2))
    }

    /// connect(), getpeername(), one exchange over connected UDP.
    pub fn probe_udp_connected(&self, to: &str) -> Result<UdpConnectedReport> {
        self.probe(&["udp-connected", "--to", to], budget(1, 4))
    }

    /// One TCP connect(): result, errno, elapsed time.
    pub fn probe_connect_time(&self, to: &str) -> Result<ConnectTimeReport> {
        self.probe(&["tcp-connect-time", "--to", to], budget(1, 4))
    }

    /// A new TCP connection every `interval_ms` for `duration_ms`.
    pub fn probe_loop(&self, to: &str, interval_ms: u64, duration_ms: u64) -> Result<TcpReport> {
        let (i, d) = (interval_ms.to_string(), duration_ms.to_string());
        let timeout = Duration::from_millis(duration_ms) + Duration::from_secs(30);
        self.probe(
            &["loop", "--to", to, "--interval-ms", &i, "--duration-ms", &d],
            timeout,
        )
    }

    /// Starts `probe ARGS` as a client in the background (e.g. a `loop`
    /// running while the agent restarts); collect it with
    /// [`BackgroundProbe::finish`].
    pub fn spawn_probe(&self, args: &[&str]) -> Result<BackgroundProbe> {
        let mut c = self.client_command(&self.probe)?;
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = process::describe(&c);
        let mut child = c.spawn().with_context(|| format!("starting `{shown}`"))?;
        let out = text_reader(child.stdout.take());
        let err = text_reader(child.stderr.take());
        Ok(BackgroundProbe {
            child,
            out,
            err,
            shown,
        })
    }

    /// Opens one long-lived TCP connection to `to` (`probe hold`).
    pub fn hold(&self, to: &str) -> Result<HoldConn> {
        HoldConn::spawn(self.client_command(&self.probe)?, to)
    }

    /// A connected UDP socket from the client to `to` (`probe hold --udp`):
    /// each ping is one datagram and its answer; after an error the probe
    /// connects a new socket, as a resolver would.
    pub fn hold_udp(&self, to: &str) -> Result<HoldConn> {
        HoldConn::spawn_with(self.client_command(&self.probe)?, to, &["--udp"])
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Servers first (their Drop reaps them); the rest drops field by
        // field: veth, namespaces (killing anything left inside, the agent
        // included), bpffs, cgroup, work directory.
        self.servers.clear();
    }
}

/// A `probe` running in the background.
#[derive(Debug)]
pub struct BackgroundProbe {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    shown: String,
}

impl BackgroundProbe {
    /// Waits (at most `timeout`) for it to exit; returns stdout.
    pub fn finish(mut self, timeout: Duration) -> Result<String> {
        let status = match process::wait_interruptible(&mut self.child, timeout)? {
            Some(s) => s,
            None => {
                process::kill_and_reap(&mut self.child);
                bail!("`{}` did not finish within {timeout:?}", self.shown);
            }
        };
        let out = self
            .out
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_default();
        if !status.success() {
            let err = self
                .err
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            bail!("`{}` failed ({status}): {}", self.shown, err.trim());
        }
        Ok(out)
    }

    /// [`BackgroundProbe::finish`] and parse the JSON.
    pub fn finish_json<T: DeserializeOwned>(self, timeout: Duration) -> Result<T> {
        let shown = self.shown.clone();
        let out = self.finish(timeout)?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing the output of `{shown}`: {out}"))
    }
}

impl Drop for BackgroundProbe {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

/// One open TCP connection (`probe hold`): each [`HoldConn::ping`] sends
/// `ping\n` over it and returns the backend's answer.
#[derive(Debug)]
pub struct HoldConn {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    peer: String,
}

impl HoldConn {
    /// Runs `probe hold --to TO` through `c` (a `probe` command in some
    /// namespace) and waits for it to connect.
    pub(crate) fn spawn(c: Command, to: &str) -> Result<HoldConn> {
        Self::spawn_with(c, to, &[])
    }

    /// [`HoldConn::spawn`] with more `probe hold` options.
    pub(crate) fn spawn_with(mut c: Command, to: &str, options: &[&str]) -> Result<HoldConn> {
        c.args(["hold", "--to", to])
            .args(options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().context("starting `probe hold`")?;
        let stdin = child.stdin.take();
        let lines = line_reader(child.stdout.take());
        let mut conn = HoldConn {
            child,
            stdin,
            lines,
            peer: String::new(),
        };
        let first = conn.next_line(Duration::from_secs(5))?;
        match first.strip_prefix("CONNECTED ") {
            Some(rest) => {
                conn.peer = rest.split_whitespace().next().unwrap_or("").to_string();
                Ok(conn)
            }
            None => bail!("`probe hold --to {to}` could not connect: {first}"),
        }
    }

    /// getpeername() of the connection (the VIP when translated).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The backend's answer (`backend-<i>`); an error with the probe's
    /// `ERR …` text if the connection failed.
    pub fn ping(&mut self) -> Result<String> {
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("connection closed");
        };
        stdin
            .write_all(b"ping\n")
            .and_then(|()| stdin.flush())
            .context("writing to `probe hold`")?;
        let line = self.next_line(Duration::from_secs(5))?;
        if let Some(e) = line.strip_prefix("ERR") {
            bail!("connection error:{e}");
        }
        Ok(line)
    }

    fn next_line(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(l.trim_end().to_string()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("`probe hold` printed nothing within {timeout:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("`probe hold` exited"),
        }
    }

    /// Closes the connection (stdin EOF) and waits for the probe.
    pub fn close(mut self) -> Result<()> {
        self.stdin.take();
        match process::wait_deadline(&mut self.child, Duration::from_secs(5))? {
            Some(_) => Ok(()),
            None => bail!("`probe hold` did not exit after EOF"),
        }
    }
}

impl Drop for HoldConn {
    fn drop(&mut self) {
        self.stdin.take();
        process::kill_and_reap(&mut self.child);
    }
}

/// 10.200.0.(i+1) for backend `i` (1-based).
pub fn backend_ip(i: usize) -> String {
    format!("10.200.0.{}", i + 1)
}

/// `backend-<i>`.
pub fn backend_name(i: usize) -> String {
    format!("backend-{i}")
}

/// Time for `count` operations of at most `per_op_s` seconds each, plus
/// start-up, capped at 10 minutes.
fn budget(count: u32, per_op_s: u64) -> Duration {
    Duration::from_secs((10 + u64::from(count) * per_op_s).min(600))
}

/// All of a child's output, as one message when the pipe closes.
fn text_reader<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut p) = pipe {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = p.read_to_end(&mut s);
            let _ = tx.send(String::from_utf8_lossy(&s).into_owned());
        });
    }
    rx
}
