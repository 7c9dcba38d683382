//! A child cgroup v2 directory owned by a test: the agent attaches its socket
//! programs here (never to the root cgroup), and test clients are moved in so
//! only their sockets are translated.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::privilege::cgroup2_root;
use crate::process;

/// `<cgroup2 root>/bpfpt-<pid>-<suffix>`; on drop every process in it is
/// killed and the directory removed.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    _claim: crate::NameClaim,
}

impl TestCgroup {
    /// Creates the cgroup (removing a stale one of the same name first).
    pub fn new(suffix: &str) -> Result<Self> {
        let root = cgroup2_root()?;
        let (name, claim) = crate::claim("cgroup", suffix)?;
        let path = root.join(&name);
        if path.exists() {
            remove(&path);
        }
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        let cg = TestCgroup {
            path,
            _claim: claim,
        };
        // Paranoia: this directory is handed to the agent as the attach
        // point; it must never be the root of the hierarchy.
        if cg.path.parent() != Some(root.as_path()) || cg.path == root {
            bail!("refusing to use {} as a test cgroup", cg.path.display());
        }
        Ok(cg)
    }

    /// The directory, for `bpfproxy run --cgroup`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pids currently in the cgroup.
    pub fn procs(&self) -> Result<Vec<u32>> {
        read_procs(&self.path)
    }

    /// Moves `pid` into the cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        let p = self.path.join("cgroup.procs");
        std::fs::write(&p, pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.path.display()))
    }

    /// Kills every process in the cgroup and waits (bounded) until it is
    /// empty; false if some survive.
    pub fn kill_all(&self) -> bool {
        kill_all(&self.path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

fn read_procs(dir: &Path) -> Result<Vec<u32>> {
    let p = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn kill_all(dir: &Path) -> bool {
    // cgroup.kill (Linux ≥ 5.14) kills the whole cgroup at once, including
    // processes forked while we look; per-pid SIGKILL is the fallback.
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let start = Instant::now();
    loop {
        let pids = read_procs(dir).unwrap_or_default();
        if pids.is_empty() {
            return true;
        }
        if start.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "bpfproxy-tests: processes survive in cgroup {}: {pids:?}",
                dir.display()
            );
            return false;
        }
        for p in pids {
            process::signal_pid(p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the members and removes the directory, retrying briefly (rmdir
/// fails with EBUSY until the last member is reaped).
fn remove(dir: &Path) {
    kill_all(dir);
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                if start.elapsed() > Duration::from_secs(5) {
                    eprintln!(
                        "bpfproxy-tests: cannot remove cgroup {}: {e}",
                        dir.display()
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
