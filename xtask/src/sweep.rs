//! Removes what privileged tests may have left behind, by name only:
//! processes named `bpfproxy` whose command line mentions `bpfpt-`, network
//! namespaces `bpfpt-*`, cgroup v2 directories `bpfpt-*` under the unified
//! mount, and bpffs mounts under /tmp whose path contains `bpfpt-`.
//!
//! Names of the form `bpfpt-<PID>-...` whose PID is a live process belong
//! to a test that is still running (perhaps another checkout's run) and are
//! left alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{procs, sh};

const PREFIX: &str = "bpfpt-";
const NETNS_DIR: &str = "/run/netns";
const CGROUP2: &str = "/sys/fs/cgroup/unified";

/// Sweeps everything; tries every item and reports all failures at the end.
pub fn sweep() -> Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |what: &str, r: Result<usize>| match r {
        Ok(0) => {}
        Ok(n) => println!("sweep: removed {n} leftover {what}"),
        Err(e) => errors.push(format!("{what}: {e:#}")),
    };
    note("bpfproxy processes", agents());
    note("network namespaces", netns());
    note("cgroups", cgroups());
    note("bpffs mounts", bpffs_mounts());
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("sweep left things behind:\n  {}", errors.join("\n  "))
    }
}

/// True if `text` names a `bpfpt-` resource that is not owned by a live
/// process (see the module doc).
fn stale(text: &str) -> bool {
    let mut found = false;
    for (i, _) in text.match_indices(PREFIX) {
        found = true;
        let rest = &text[i + PREFIX.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let owner_marker =
            !digits.is_empty() && matches!(rest[digits.len()..].chars().next(), None | Some('-'));
        if owner_marker && digits.parse().is_ok_and(procs::alive) {
            return false;
        }
    }
    found
}

fn agents() -> Result<usize> {
    let pids: Vec<u32> = procs::list()?
        .into_iter()
        .filter(|p| p.comm == "bpfproxy" && stale(&p.cmdline))
        .map(|p| p.pid)
        .collect();
    procs::terminate(&pids, Duration::from_secs(3))?;
    Ok(pids.len())
}

fn netns() -> Result<usize> {
    let names = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(PREFIX) && stale(n))
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).context(format!("cannot list {NETNS_DIR}")),
    };
    let mut errors = Vec::new();
    for name in &names {
        if let Err(e) = remove_netns(name) {
            errors.push(format!("{name}: {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(names.len())
}

fn remove_netns(name: &str) -> Result<()> {
    // Processes still inside keep the namespace alive after its name is gone.
    let pids: Vec<u32> = sh::probe(&mut sh::cmd("ip", ["netns", "pids", name]))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    procs::terminate(&pids, Duration::from_secs(2))?;
    sh::run(&mut sh::cmd("ip", ["netns", "delete", name]))
}

fn cgroups() -> Result<usize> {
    let tops = match std::fs::read_dir(CGROUP2) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(PREFIX) && stale(n))
            })
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).context(format!("cannot list {CGROUP2}")),
    };
    let mut errors = Vec::new();
    for top in &tops {
        if let Err(e) = remove_cgroup(top) {
            errors.push(format!("{}: {e:#}", top.display()));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(tops.len())
}

/// Kills the processes of `dir`'s subtree, then removes it, children first.
fn remove_cgroup(dir: &Path) -> Result<()> {
    for child in std::fs::read_dir(dir)? {
        let child = child?;
        if child.file_type()?.is_dir() {
            remove_cgroup(&child.path())?;
        }
    }
    let pids = cgroup_procs(dir)?;
    if !pids.is_empty() {
        println!("sweep: killing {pids:?} in {}", dir.display());
        // cgroup.kill (Linux >= 5.14) also catches processes forked meanwhile.
        let kill_file = dir.join("cgroup.kill");
        if kill_file.exists() {
            println!("$ echo 1 > {}", kill_file.display());
            std::fs::write(&kill_file, "1")
                .with_context(|| format!("cannot write {}", kill_file.display()))?;
        } else {
            procs::signal(&pids, "KILL")?;
        }
        if !procs::wait_gone(&pids, Duration::from_secs(5)) {
            bail!("processes of {} survived SIGKILL", dir.display());
        }
    }
    // A killed process leaves cgroup.procs a moment after it is reaped.
    for _ in 0..100 {
        if cgroup_procs(dir)?.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("$ rmdir {}", dir.display());
    std::fs::remove_dir(dir).with_context(|| format!("cannot rmdir {}", dir.display()))
}

fn cgroup_procs(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn bpffs_mounts() -> Result<usize> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(bpf_mount_point)
        .filter(|p| {
            p.starts_with("/tmp") && p.to_str().is_some_and(|s| s.contains(PREFIX) && stale(s))
        })
        .collect();
    // Most recently mounted first (children and stacked mounts before what
    // they cover; a point mounted twice is unmounted twice).
    points.reverse();
    let mut errors = Vec::new();
    for p in &points {
        let mut c = sh::cmd("umount", [p]);
        if sh::run(&mut c).is_err() {
            let mut lazy = sh::cmd("umount", ["-l".as_ref(), p.as_os_str()]);
            if let Err(e) = sh::run(&mut lazy) {
                errors.push(format!("{}: {e:#}", p.display()));
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(points.len())
}

/// The mount point of a mountinfo line if its filesystem type is bpf.
/// Format: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SRC SUPEROPTS`.
fn bpf_mount_point(line: &str) -> Option<PathBuf> {
    let (left, right) = line.split_once(" - ")?;
    if right.split_whitespace().next()? != "bpf" {
        return None;
    }
    let point = left.split_whitespace().nth(4)?;
    Some(PathBuf::from(unescape(point)))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let oct = bytes.get(i + 1..i + 4).unwrap_or_default();
        if bytes[i] == b'\\' && oct.len() == 3 && oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = oct
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_names() {
        assert!(stale("bpfpt-e2e-1"));
        assert!(stale("/tmp/bpfpt-x/fs"));
        assert!(!stale("other"));
        // PID 1 is alive: owned by a running process.
        assert!(!stale("bpfpt-1-e2e"));
        assert!(!stale("bpfpt-1"));
        // Digits not followed by '-' are not an owner marker.
        assert!(stale("bpfpt-1x"));
    }

    #[test]
    fn mountinfo_lines() {
        let line = "85 30 0:45 / /tmp/bpfpt-a\\040b rw,relatime shared:40 - bpf bpf rw,mode=700";
        assert_eq!(bpf_mount_point(line), Some(PathBuf::from("/tmp/bpfpt-a b")));
        let other = "30 1 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw";
        assert_eq!(bpf_mount_point(other), None);
    }
}
