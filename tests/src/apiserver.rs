//! A real Kubernetes API server (the `k8s.io/apiserver` generic server from
//! `tests/apiserver/`, on etcd 3.5) started per test on loopback, with a
//! kubeconfig for the agent and the test's own client.
//!
//! The server can be stopped and started again on the same port (API server
//! outage tests); etcd keeps the data meanwhile.
use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::process::{self, kill_and_reap};

/// Builds (once per machine, cached) the API server and etcd; returns the
/// directory holding both binaries.
pub fn build() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("apiserver/build.sh");
    let out =
        process::output_with_timeout(Command::new("bash").arg(&script), Duration::from_secs(1800))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}\n{}",
            script.display(),
            out.status,
            out.stdout,
            out.stderr
        );
    }
    let dir = out
        .stdout
        .lines()
        .last()
        .map(PathBuf::from)
        .context("build.sh printed no bin dir")?;
    for bin in ["bpfproxy-test-apiserver", "etcd"] {
        if !dir.join(bin).exists() {
            bail!("{} lacks {bin}", dir.display());
        }
    }
    Ok(dir)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// etcd + API server processes, killed on drop.
pub struct ApiServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    server: Option<Child>,
    etcd_url: String,
    port: u16,
    extra_args: Vec<String>,
}

impl ApiServer {
    /// Starts etcd and the API server; `extra_args` go to the server
    /// (e.g. `--watch-cache=false`), `etcd_args` to etcd (e.g. fast
    /// compaction to force 410 Expired).
    pub fn start(extra_args: &[&str], etcd_args: &[&str]) -> Result<Self> {
        let bin = build()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("bpfpt-{}-apiserver-", std::process::id()))
            .tempdir()?;
        let (ep, pp) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{ep}");
        let peer = format!("http://127.0.0.1:{pp}");
        let log = fs::File::create(dir.path().join("etcd.log"))?;
        let etcd = Command::new(bin.join("etcd"))
            .args(["--name", "default", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .arg(format!("--initial-cluster=default={peer}"))
            .args(["--unsafe-no-fsync", "--log-level", "warn"])
            .args(etcd_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        let mut me = ApiServer {
            bin,
            dir,
            etcd: Some(etcd),
            server: None,
            etcd_url,
            port: 0,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        me.wait_etcd()?;
        me.start_server()?;
        Ok(me)
    }

    fn wait_etcd(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = process::output_with_timeout(
                Command::new("curl").args(["-sf", &format!("{}/health", self.etcd_url)]),
                Duration::from_secs(3),
            )?;
            if out.status.success() && out.stdout.contains("true") {
                return Ok(());
            }
            if let Some(c) = self.etcd.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("etcd exited ({st}):\n{}", self.log_tail("etcd.log"));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "etcd not healthy within 20 s:\n{}",
            self.log_tail("etcd.log")
        )
    }

    /// Starts the API server (again): on a new port the first time, on the
    /// same port afterwards so existing kubeconfigs keep working.
    pub fn start_server(&mut self) -> Result<()> {
        if self.server.is_some() {
            bail!("API server already running");
        }
        let kubeconfig = self.kubeconfig();
        let _ = fs::remove_file(&kubeconfig);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("apiserver.log"))?;
        let child = Command::new(self.bin.join("bpfproxy-test-apiserver"))
            .args(["--etcd-servers", &self.etcd_url])
            .args(["--bind-port", &self.port.to_string()])
            .arg("--cert-dir")
            .arg(self.dir.path().join("certs"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the API server")?;
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(st) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.server = None;
                bail!(
                    "API server exited ({st}):\n{}",
                    self.log_tail("apiserver.log")
                );
            }
            if kubeconfig.exists() {
                let url = self.url()?;
                let ca = self.dir.path().join("certs/ca.crt");
                let out = process::output_with_timeout(
                    Command::new("curl")
                        .args(["-sf", "--cacert"])
                        .arg(&ca)
                        .arg(format!("{url}/readyz")),
                    Duration::from_secs(3),
                )?;
                if out.status.success() {
                    self.port = url
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .context("port in kubeconfig")?;
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "API server not ready within 30 s:\n{}",
            self.log_tail("apiserver.log")
        )
    }

    /// Starts the API server on `port` (0: a new free one).
    pub fn start_server_on(&mut self, port: u16) -> Result<()> {
        self.port = port;
        self.start_server()
    }

    /// The port the server listens on (also while it is stopped).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the API server (SIGTERM, then SIGKILL); etcd keeps running.
    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            process::signal_pid(c.id(), libc::SIGTERM);
            if process::wait_deadline(&mut c, Duration::from_secs(5))
                .ok()
                .flatten()
                .is_none()
            {
                kill_and_reap(&mut c);
            }
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The server URL the kubeconfig names.
    pub fn url(&self) -> Result<String> {
        let text = fs::read_to_string(self.kubeconfig())?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .map(|s| s.trim().trim_matches('"').to_string())
            .context("no server: in kubeconfig")
    }

    fn log_tail(&self, name: &str) -> String {
        process::tail_file(&self.dir.path().join(name), 30)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_server();
        if let Some(mut c) = self.etcd.take() {
            kill_and_reap(&mut c);
        }
    }
}
