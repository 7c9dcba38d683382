//! Loads the generated rulesets with the real tools inside fresh network
//! namespaces (never the root namespace's firewall) and times them.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bpfproxy_tests::{process, Netns};

use super::{iptables, model::SvcPort, nft};

/// Rounds stop early (after the first full load, after three updates) once
/// they have taken this long: the slowest tools take minutes per load at
/// 50k Services, and the report shows how many rounds ran.
const ROUNDS_BUDGET: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    IptablesLegacy,
    IptablesNft,
    Nftables,
}

impl Backend {
    pub const ALL: [Backend; 3] = [
        Backend::IptablesLegacy,
        Backend::IptablesNft,
        Backend::Nftables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::IptablesNft => "iptables-nft",
            Backend::Nftables => "nftables",
        }
    }

    /// The load command for `file`; `partial`: on top of what is loaded.
    fn command(self, ns: &Netns, file: &Path, partial: bool) -> Result<Command> {
        let mut c = match self {
            Backend::IptablesLegacy => ns.command("iptables-legacy-restore")?,
            Backend::IptablesNft => ns.command("iptables-nft-restore")?,
            Backend::Nftables => {
                let mut c = ns.command("nft")?;
                c.arg("-f");
                c
            }
        };
        if self != Backend::Nftables {
            // As kube-proxy runs it: wait for the xtables lock.
            c.args(["-w", "5"]);
            if partial {
                c.arg("--noflush");
            }
        }
        c.arg(file);
        Ok(c)
    }

    pub fn full_text(self, svcs: &[SvcPort]) -> String {
        match self {
            Backend::Nftables => nft::full(svcs),
            _ => iptables::full(svcs),
        }
    }

    pub fn partial_text(self, svcs: &[SvcPort], old: &SvcPort, new: &SvcPort) -> String {
        match self {
            Backend::Nftables => nft::partial(old, new),
            _ => iptables::partial(svcs, old, new),
        }
    }

    /// The loaded ruleset as text (to check that a load took effect).
    pub fn dump(self, ns: &Netns) -> Result<String> {
        let args: &[&str] = match self {
            Backend::IptablesLegacy => &["iptables-legacy-save", "-t", "nat"],
            Backend::IptablesNft => &["iptables-nft-save", "-t", "nat"],
            Backend::Nftables => &["nft", "list", "table", "ip", "kube-proxy"],
        };
        ns.run(args, Duration::from_secs(300))
    }

    /// Writes `text` to a file and loads it in `ns`; returns how long the
    /// tool took from start to exit, `None` if it took longer than
    /// `timeout` (then it was killed).
    pub fn load(
        self,
        ns: &Netns,
        text: &str,
        partial: bool,
        timeout: Duration,
    ) -> Result<Option<Duration>> {
        let file = RuleFile::new(text)?;
        let mut c = self.command(ns, &file.0, partial)?;
        let shown = process::describe(&c);
        timed(&mut c, timeout).with_context(|| format!("`{shown}` in {}", ns.name()))
    }
}

/// Runs `cmd` to its end and times it (`None`: killed after `timeout`);
/// fails on a non-zero exit with its stderr. The wait blocks in a thread, so
/// the time is not rounded up to a polling interval.
fn timed(cmd: &mut Command, timeout: Duration) -> Result<Option<Duration>> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = child.spawn().context("cannot start")?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send((start.elapsed(), out));
    });
    let (took, out) = match rx.recv_timeout(timeout) {
        Ok(done) => done,
        Err(_) => {
            process::signal_pid(pid, libc::SIGKILL);
            // Reaped by the waiting thread.
            let _ = rx.recv_timeout(Duration::from_secs(10));
            return Ok(None);
        }
    };
    let out = out.context("waiting")?;
    if !out.status.success() {
        bail!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some(took))
}

/// A ruleset written to a temporary file, removed on drop.
struct RuleFile(PathBuf);

impl RuleFile {
    fn new(text: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("bpfpt-{}-rules", std::process::id()));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(RuleFile(path))
    }
}

impl Drop for RuleFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How many loads, and how long one may take.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    pub full: usize,
    pub partial: usize,
    pub timeout: Duration,
}

/// Times for one backend and Service count.
#[derive(Debug, Default, Clone)]
pub struct LoadTimes {
    pub full: Vec<Duration>,
    pub partial: Vec<Duration>,
    /// Lines of the full load's input (rules, chains, elements).
    pub lines: usize,
    /// A full load took longer than the timeout (so no updates either).
    pub timed_out: bool,
}

/// `full_rounds` loads of the whole ruleset, each into a fresh namespace,
/// then `partial_rounds` one-Service updates on top of the last one.
pub fn measure(b: Backend, n: usize, rounds: Rounds) -> Result<LoadTimes> {
    let Rounds {
        full: full_rounds,
        partial: partial_rounds,
        timeout,
    } = rounds;
    let mut svcs = super::model::cluster(n);
    let text = b.full_text(&svcs);
    let mut out = LoadTimes {
        lines: text.lines().count(),
        ..Default::default()
    };
    let mut ns = None;
    let start = Instant::now();
    for r in 0..full_rounds.max(1) {
        bpfproxy_tests::interrupt::check()?;
        if r > 0 && start.elapsed() > ROUNDS_BUDGET {
            break;
        }
        // The previous namespace goes first: one loaded table at a time.
        drop(ns.take());
        let fresh = Netns::new("kp-load")?;
        let Some(took) = b.load(&fresh, &text, false, timeout)? else {
            out.timed_out = true;
            return Ok(out);
        };
        out.full.push(took);
        ns = Some(fresh);
    }
    drop(text);
    let ns = ns.context("no namespace")?;
    let mut versions = vec![0usize; n];
    let mut last = None;
    let start = Instant::now();
    for r in 0..partial_rounds {
        bpfproxy_tests::interrupt::check()?;
        if r >= 3 && start.elapsed() > ROUNDS_BUDGET {
            break;
        }
        let i = (r * 7919 + 13) % n;
        versions[i] += 1;
        let new = SvcPort::synthetic(i, versions[i]);
        let old = std::mem::replace(&mut svcs[i], new.clone());
        let text = b.partial_text(&svcs, &old, &new);
        let took = b.load(&ns, &text, true, timeout)?;
        out.partial
            .push(took.context("a one-Service update timed out")?);
        last = Some(new);
    }
    if let Some(s) = last {
        let want = s.endpoints[1].to_string();
        if !b.dump(&ns)?.contains(&want) {
            bail!(
                "{}: after the updates {want} is not in the ruleset",
                b.label()
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real tools accept the generated rulesets: a full load and two
    /// updates of the same Service in a fresh namespace, per backend.
    /// Needs root (network namespaces) and the iptables and nftables
    /// packages.
    #[test]
    fn the_tools_accept_the_rulesets() -> Result<()> {
        bpfproxy_tests::require_root()
            .context("this test loads rulesets into a fresh network namespace")?;
        for b in Backend::ALL {
            let rounds = Rounds {
                full: 1,
                partial: 2,
                timeout: Duration::from_secs(60),
            };
            let t = measure(b, 20, rounds).with_context(|| b.label())?;
            assert_eq!((t.full.len(), t.partial.len()), (1, 2));
        }
        Ok(())
    }
}
