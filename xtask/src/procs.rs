//! Processes, read from /proc: find them, signal them, wait for them to go.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::sh;

/// One process as /proc shows it.
pub struct Proc {
    pub pid: u32,
    /// `/proc/PID/comm` (the executable name, at most 15 bytes).
    pub comm: String,
    /// `/proc/PID/cmdline` with the arguments joined by spaces.
    pub cmdline: String,
}

/// Every process but this one (processes that exit while we read are skipped).
pub fn list() -> Result<Vec<Proc>> {
    let me = std::process::id();
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let cmdline = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        procs.push(Proc {
            pid,
            comm: comm.trim_end().to_string(),
            cmdline,
        });
    }
    Ok(procs)
}

/// Liveness checks shared with the test harness (a zombie counts as gone).
pub use bpfproxy_tests::process::{pid_alive as alive, wait_pids_gone as wait_gone};

/// Sends `signal` (e.g. "TERM", "KILL") to `pids` with kill(1). A process
/// that is already gone is not an error.
pub fn signal(pids: &[u32], signal: &str) -> Result<()> {
    let live: Vec<String> = pids
        .iter()
        .filter(|p| alive(**p))
        .map(|p| p.to_string())
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    let mut c = sh::cmd("kill", ["-s", signal]);
    c.args(&live);
    if let Err(e) = sh::run(&mut c) {
        // kill(1) fails if any one of them exited meanwhile: only the
        // survivors matter.
        let still: Vec<String> = live
            .iter()
            .filter(|p| p.parse().is_ok_and(alive))
            .cloned()
            .collect();
        if !still.is_empty() {
            return Err(e);
        }
    }
    Ok(())
}

/// TERM, then KILL for those still there after `grace`; fails if any
/// survives both.
pub fn terminate(pids: &[u32], grace: Duration) -> Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    signal(pids, "TERM")?;
    if wait_gone(pids, grace) {
        return Ok(());
    }
    signal(pids, "KILL")?;
    if wait_gone(pids, Duration::from_secs(5)) {
        return Ok(());
    }
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    anyhow::bail!("processes {left:?} survived SIGKILL")
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string(Path::new("/proc/self/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
