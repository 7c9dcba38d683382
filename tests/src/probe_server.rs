//! A `probe serve` process in a test namespace: TCP (HTTP and a line
//! protocol) and UDP on one address, answering with its name. Used by the
//! single-node sandbox and the multi-node cluster sandbox alike.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::process;

/// A running server; killed on drop.
#[derive(Debug)]
pub struct ProbeServer {
    child: Child,
    /// Held open: the server exits when it sees EOF, i.e. when we are gone.
    _stdin: Option<ChildStdin>,
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

impl ProbeServer {
    /// Starts `probe serve --name NAME` in `ns` on `ip` with the given ports,
    /// logging to `log_path`, and waits for it to report ready.
    pub fn start(
        ns: &Netns,
        probe: &Path,
        name: &str,
        ip: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
        log_path: &Path,
    ) -> Result<Self> {
        Self::start_with(ns, probe, name, ip, tcp_ports, udp_ports, log_path, &[])
    }

    /// [`ProbeServer::start`] with more `probe serve` options (e.g.
    /// `--echo-peer`).
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        ns: &Netns,
        probe: &Path,
        name: &str,
        ip: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
        log_path: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let join = |ports: &[u16]| {
            ports
                .iter()
                .map(|p| format!("{ip}:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = ns.command(probe)?;
        cmd.args(["serve", "--name", name, "--exit-on-stdin-eof"]);
        cmd.args(extra);
        if !tcp_ports.is_empty() {
            cmd.args(["--tcp", &join(tcp_ports)]);
        }
        if !udp_ports.is_empty() {
            cmd.args(["--udp", &join(udp_ports)]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let shown = process::describe(&cmd);
        let mut child = cmd.spawn().with_context(|| format!("starting `{shown}`"))?;
        let stdin = child.stdin.take();
        let lines = line_reader(child.stdout.take());
        let mut server = ProbeServer {
            child,
            _stdin: stdin,
        };
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.trim() == "ready" => Ok(server),
            other => {
                process::kill_and_reap(&mut server.child);
                bail!(
                    "`{shown}` did not report ready ({other:?}); its log:\n{}",
                    process::tail_file(log_path, 20)
                )
            }
        }
    }
}

/// Lines of a child's stdout, on a channel (so reads can time out).
pub fn line_reader<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(p) = pipe {
        std::thread::spawn(move || {
            for line in BufReader::new(p).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}
