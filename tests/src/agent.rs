//! The agent under test, run as a real `bpfproxy run` process.
//!
//! Its stdout and stderr go to a log file so a failing test can show what the
//! agent said; every error from this module carries the log's tail, and the
//! tail is printed when a test panics while the guard is alive.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process;

/// Lines of agent log included in error messages.
const LOG_TAIL: usize = 40;

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The `bpfproxy` binary.
    pub bin: PathBuf,
    /// `--source`: the manifest directory; None: the API server named by
    /// `--kubeconfig` in `extra_args` (see [`AgentConfig::for_api_server`]).
    pub source: Option<PathBuf>,
    /// `--cgroup`: a test's child cgroup, never the root.
    pub cgroup: PathBuf,
    /// `--bpffs`: a private bpffs mount.
    pub bpffs: PathBuf,
    pub node_name: Option<String>,
    /// Run the agent inside this network namespace (`/var/run/netns/NAME`),
    /// so e.g. its metrics port is private to the test. `None`: ours.
    pub netns: Option<PathBuf>,
    /// More `bpfproxy run` arguments (e.g. `--metrics-bind-address`).
    pub extra_args: Vec<String>,
    /// Extra environment (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Where `agent.log` goes; `None`: a temporary directory of its own.
    pub log_dir: Option<PathBuf>,
}

impl AgentConfig {
    /// The binary from [`crate::paths::bpfproxy_bin`], the rest as given.
    pub fn new(source: &Path, cgroup: &Path, bpffs: &Path) -> Result<Self> {
        Ok(AgentConfig {
            bin: crate::paths::bpfproxy_bin()?,
            source: Some(source.to_path_buf()),
            cgroup: cgroup.to_path_buf(),
            bpffs: bpffs.to_path_buf(),
            node_name: None,
            netns: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            log_dir: None,
        })
    }

    /// Watches the API server of `kubeconfig` instead of a directory. The
    /// agent runs in our namespace (the server listens on our loopback), so
    /// its HTTP ports are the given free loopback ports, not the defaults.
    pub fn for_api_server(
        mut self,
        kubeconfig: &Path,
        metrics_port: u16,
        healthz_port: u16,
    ) -> Self {
        self.source = None;
        self.netns = None;
        self.extra_args.extend([
            "--kubeconfig".to_string(),
            kubeconfig.display().to_string(),
            format!("--metrics-bind-address=127.0.0.1:{metrics_port}"),
            format!("--healthz-bind-address=127.0.0.1:{healthz_port}"),
        ]);
        self
    }

    /// The `bpfproxy run …` arguments.
    pub fn run_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into()];
        if let Some(source) = &self.source {
            a.push("--source".into());
            a.push(source.clone().into());
        }
        a.extend::<[OsString; 4]>([
            "--cgroup".into(),
            self.cgroup.clone().into(),
            "--bpffs".into(),
            self.bpffs.clone().into(),
        ]);
        if let Some(n) = &self.node_name {
            a.push("--node-name".into());
            a.push(n.into());
        }
        a.extend(self.extra_args.iter().map(OsString::from));
        // Never the agent's default (the devices carrying the node's
        // addresses): an agent in the root namespace, as the API-server
        // tier and the benchmarks run it, would attach to the host's own
        // devices. Tests that want TC name their sandbox devices.
        if !self.extra_args.iter().any(|a| a.starts_with("--devices")) {
            a.push("--devices=none".into());
        }
        a
    }
}

/// A running (or killed, restartable) `bpfproxy run`; killed on drop.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    child: Option<Child>,
    log_path: PathBuf,
    _log_dir: Option<tempfile::TempDir>,
    starts: u32,
}

impl Agent {
    /// Starts the agent. It is not ready yet: use [`Agent::wait_until`].
    pub fn start(cfg: AgentConfig) -> Result<Self> {
        if cfg.cgroup.parent().is_none() || cfg.cgroup == crate::privilege::cgroup2_root()? {
            bail!(
                "refusing to attach the agent to the root cgroup {}",
                cfg.cgroup.display()
            );
        }
        let (log_dir, tmp) = match &cfg.log_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("bpfpt-{}-agent-", std::process::id()))
                    .tempdir()
                    .context("creating the agent log directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let mut agent = Agent {
            log_path: log_dir.join("agent.log"),
            cfg,
            child: None,
            _log_dir: tmp,
            starts: 0,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let args = self.cfg.run_args();
        let mut cmd = Command::new(&self.cfg.bin);
        cmd.args(&args);
        writeln!(
            log,
            "===== bpfproxy-tests: start #{}: {}",
            self.starts,
            process::describe(&cmd)
        )
        .ok();
        let err_log = log.try_clone().context("duplicating the log descriptor")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        for (k, v) in &self.cfg.env {
            cmd.env(k, v);
        }
        crate::netns::enter(&mut cmd, self.cfg.netns.as_deref(), None)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.cfg.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// The pid while started (even if it has exited and not been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fails (with the log tail) if the agent was started and has exited on
    /// its own.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = &mut self.child {
            if let Some(status) = c.try_wait().context("waiting for the agent")? {
                bail!(
                    "the agent exited ({status}); log tail:\n{}",
                    self.log_tail(LOG_TAIL)
                );
            }
        }
        Ok(())
    }

    /// SIGKILL, like a crash or an OOM kill: no cleanup runs in the agent.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            process::kill_and_reap(&mut c);
            if matches!(c.try_wait(), Ok(None)) {
                bail!("agent pid {} survived SIGKILL", c.id());
            }
        }
        Ok(())
    }

    /// SIGTERM (graceful shutdown) and wait up to `timeout`; SIGKILL after.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("the agent is not running");
        };
        process::signal_pid(c.id(), libc::SIGTERM);
        match process::wait_deadline(&mut c, timeout)? {
            Some(s) => Ok(s),
            None => {
                process::kill_and_reap(&mut c);
                bail!(
                    "the agent did not exit within {timeout:?} of SIGTERM (killed); log tail:\n{}",
                    self.log_tail(LOG_TAIL)
                )
            }
        }
    }

    /// Kills the agent if it runs and starts it again with the same
    /// configuration (the log file continues).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Starts the agent again after [`Agent::kill`] / [`Agent::terminate`].
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("the agent is already running");
        }
        self.child = None;
        self.spawn()
    }

    /// `bpfproxy dump --json` of this agent's pins (works while the agent is
    /// down too: the pins outlive it).
    pub fn dump_json(&self) -> Result<Value> {
        dump_json(&self.cfg.bin, &self.cfg.bpffs)
            .map_err(|e| e.context(format!("agent log tail:\n{}", self.log_tail(LOG_TAIL))))
    }

    /// `bpfproxy dump` in its human form.
    pub fn dump_text(&self) -> Result<String> {
        let mut c = Command::new(&self.cfg.bin);
        c.arg("dump").arg("--bpffs").arg(&self.cfg.bpffs);
        process::run_with_timeout(&mut c, Duration::from_secs(10))
    }

    /// Polls the dump every 50 ms until `pred` holds, for at most `timeout`;
    /// returns the dump that satisfied it. Fails early if the agent exits on
    /// its own; dump errors (e.g. nothing pinned yet) are retried.
    pub fn wait_until(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        let start = Instant::now();
        let last = loop {
            self.check_alive()?;
            crate::interrupt::check()?;
            let last = dump_json(&self.cfg.bin, &self.cfg.bpffs);
            if let Ok(d) = &last {
                if pred(d) {
                    return Ok(d.clone());
                }
            }
            if start.elapsed() >= timeout {
                break last;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let shown = match last {
            Ok(d) => format!("last dump: {d}"),
            Err(e) => format!("last dump failed: {e:#}"),
        };
        bail!(
            "condition not met within {timeout:?}; {shown}\nagent log tail:\n{}",
            self.log_tail(LOG_TAIL)
        )
    }

    /// Waits until frontend `vip:port/proto` has exactly `backends` (as
    /// `ip:port`, any order).
    pub fn wait_for_backends(
        &mut self,
        vip: &str,
        port: u16,
        proto: &str,
        backends_expected: &[String],
        timeout: Duration,
    ) -> Result<Value> {
        let mut want: Vec<String> = backends_expected.to_vec();
        want.sort();
        self.wait_until(
            |d| {
                backends(d, vip, port, proto).is_some_and(|mut b| {
                    b.sort();
                    b == want
                })
            },
            timeout,
        )
        .with_context(|| format!("waiting for {vip}:{port}/{proto} -> {want:?}"))
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::tail_file(&self.log_path, lines)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::kill_and_reap(&mut c);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- bpfproxy agent log tail ({}):\n{}\n----",
                self.log_path.display(),
                self.log_tail(LOG_TAIL)
            );
        }
    }
}

/// `BIN dump --bpffs BPFFS --json`, parsed.
pub fn dump_json(bin: &Path, bpffs: &Path) -> Result<Value> {
    let mut c = Command::new(bin);
    c.arg("dump").arg("--bpffs").arg(bpffs).arg("--json");
    let out = process::run_with_timeout(&mut c, Duration::from_secs(10))?;
    serde_json::from_str(&out)
        .with_context(|| format!("parsing `bpfproxy dump --json` output: {out}"))
}

/// The frontend `vip:port/proto` of a dump (`proto` "TCP"/"UDP", any case).
pub fn frontend<'a>(dump: &'a Value, vip: &str, port: u16, proto: &str) -> Option<&'a Value> {
    dump.get("frontends")?.as_array()?.iter().find(|f| {
        f.get("vip").and_then(Value::as_str) == Some(vip)
            && f.get("port").and_then(Value::as_u64) == Some(u64::from(port))
            && f.get("protocol")
                .and_then(Value::as_str)
                .is_some_and(|p| p.eq_ignore_ascii_case(proto))
    })
}

/// The backends (`ip:port`, in dump order) of frontend `vip:port/proto`;
/// `None` if there is no such frontend.
pub fn backends(dump: &Value, vip: &str, port: u16, proto: &str) -> Option<Vec<String>> {
    let f = frontend(dump, vip, port, proto)?;
    Some(
        f.get("backends")?
            .as_array()?
            .iter()
            .filter_map(|b| {
                Some(format!(
                    "{}:{}",
                    b.get("ip")?.as_str()?,
                    b.get("port")?.as_u64()?
                ))
            })
            .collect(),
    )
}

/// Number of frontends in a dump.
pub fn frontend_count(dump: &Value) -> usize {
    dump.get("frontends")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}
