//! Network namespaces owned by a test: created with `ip netns add`, removed on
//! drop together with every process still inside.
//!
//! Commands enter a namespace with `setns(2)` in `pre_exec` on a descriptor
//! opened *before* the fork (the child may only make async-signal-safe
//! calls). We do not use `ip netns exec`: it also remounts /sys, which hides
//! the bpffs pins and the cgroup tree from the child (the agent needs both).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cgroup::TestCgroup;
use crate::process::{self, Output};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A network namespace named `bpfpt-<pid>-<suffix>`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    _claim: crate::NameClaim,
}

impl Netns {
    /// Creates the namespace and brings `lo` up. A stale namespace of the
    /// same name (left by a crashed process that had our pid) is removed
    /// first. `suffix` must be unique among this process's live namespaces.
    pub fn new(suffix: &str) -> Result<Self> {
        let (name, claim) = crate::claim("netns", suffix)?;
        let path = Path::new(NETNS_DIR).join(&name);
        if path.exists() {
            delete_named(&name);
        }
        process::ip(&["netns", "add", &name])
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Netns {
            name,
            path,
            _claim: claim,
        };
        process::ip(&["-n", &ns.name, "link", "set", "lo", "up"])
            .with_context(|| format!("bringing lo up in {}", ns.name))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`, for `nsenter --net=PATH`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command whose child runs inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut c = Command::new(program);
        enter(&mut c, Some(&self.path), None)?;
        Ok(c)
    }

    /// A command whose child runs inside this namespace and in `cgroup`
    /// (so the cgroup's socket programs see its sockets).
    pub fn command_in_cgroup(
        &self,
        program: impl AsRef<OsStr>,
        cgroup: &TestCgroup,
    ) -> Result<Command> {
        let mut c = Command::new(program);
        enter(&mut c, Some(&self.path), Some(cgroup.path()))?;
        Ok(c)
    }

    /// Runs `args[0] args[1..]` in the namespace, waits at most `timeout`,
    /// fails on a non-zero exit; returns stdout.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut c = self.command_args(args)?;
        process::run_with_timeout(&mut c, timeout)
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Like [`Netns::run`] but returns the exit status and both outputs
    /// whatever the exit code.
    pub fn output(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut c = self.command_args(args)?;
        process::output_with_timeout(&mut c, timeout)
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// `ip -n <name> ARGS` (configuration inside the namespace).
    /// Joins this namespace for the calling thread only (setns is per
    /// thread): sockets, netlink requests and BPF_PROG_TEST_RUN packets the
    /// thread makes from then on live here, so it sees only the test's own
    /// devices and routes.
    pub fn join_this_thread(&self) -> Result<()> {
        let f = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        // SAFETY: a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns {}: {}",
                self.path().display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// [`Netns::ip`] with the arguments as one line split at spaces, for
    /// long `ip` commands that read best as written on a shell.
    pub fn ip_line(&self, line: &str) -> Result<String> {
        self.ip(&line.split_whitespace().collect::<Vec<_>>())
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        process::ip(&all)
    }

    fn command_args(&self, args: &[&str]) -> Result<Command> {
        let Some((prog, rest)) = args.split_first() else {
            bail!("empty command line");
        };
        let mut c = self.command(prog)?;
        c.args(rest);
        Ok(c)
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.path)
    }

    /// SIGKILLs every process in the namespace and waits (bounded) for them.
    pub fn kill_all(&self) -> bool {
        kill_all_in(&self.path)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_named(&self.name);
    }
}

/// Kills everything inside namespace `name` and deletes it; best effort.
fn delete_named(name: &str) {
    let path = Path::new(NETNS_DIR).join(name);
    if !kill_all_in(&path) {
        eprintln!(
            "bpfproxy-tests: processes survive in netns {name}: {:?}",
            pids_in(&path)
        );
    }
    if let Err(e) = process::ip(&["netns", "del", name]) {
        if path.exists() {
            eprintln!("bpfproxy-tests: cannot delete netns {name}: {e:#}");
        }
    }
}

fn kill_all_in(path: &Path) -> bool {
    let pids = pids_in(path);
    for p in &pids {
        process::signal_pid(*p, libc::SIGKILL);
    }
    process::wait_pids_gone(&pids, Duration::from_secs(5))
}

/// Processes whose `/proc/PID/ns/net` is the namespace behind `path`
/// (what `ip netns pids` does, without forking `ip`).
fn pids_in(path: &Path) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .collect()
}

/// Names of all namespaces `ip netns` knows.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Makes `cmd`'s child join the cgroup `cgroup_dir` (if given) and then the
/// network namespace behind `netns_path` (if given) before it execs.
///
/// Both files are opened here, before the fork; the child only calls
/// `write(2)` and `setns(2)`. The descriptors are close-on-exec and live as
/// long as `cmd`.
pub fn enter(
    cmd: &mut Command,
    netns_path: Option<&Path>,
    cgroup_dir: Option<&Path>,
) -> Result<()> {
    let ns = match netns_path {
        Some(p) => Some(
            File::open(p).with_context(|| format!("opening network namespace {}", p.display()))?,
        ),
        None => None,
    };
    let procs = match cgroup_dir {
        Some(dir) => {
            let p = dir.join("cgroup.procs");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .with_context(|| format!("opening {}", p.display()))?;
            Some(f)
        }
        None => None,
    };
    // SAFETY: the closure only makes raw syscalls (write, setns) on
    // descriptors owned by the closure; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(f) = &procs {
                // "0" moves the writing process, i.e. this child.
                let buf = b"0";
                if libc::write(f.as_raw_fd(), buf.as_ptr().cast(), buf.len()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(f) = &ns {
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}
