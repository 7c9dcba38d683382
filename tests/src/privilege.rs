//! Privileged tests need root and cgroup v2. They *fail* without them (never
//! skip): a silently skipped tier looks exactly like a passing one.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Where the harness expects the cgroup2 mount (hybrid layout on Debian 12);
/// any other cgroup2 mount found in /proc/mounts is accepted too.
pub const PREFERRED_CGROUP2: &str = "/sys/fs/cgroup/unified";

/// Fails unless we run as euid 0 with a cgroup v2 mount.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "privileged test needs root (euid is {euid}): it creates network namespaces, \
             cgroups, a bpffs mount and loads eBPF programs; run it as root \
             (e.g. `sudo -E cargo xtask test`)"
        );
    }
    cgroup2_root().context("privileged tests need a cgroup v2 mount")?;
    Ok(())
}

/// The cgroup2 mount point: [`PREFERRED_CGROUP2`] if it is one, else the
/// first cgroup2 entry of /proc/mounts.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2"))
                .then(|| f.get(1).copied())
                .flatten()
        })
        .collect();
    if points.contains(&PREFERRED_CGROUP2) {
        return Ok(PathBuf::from(PREFERRED_CGROUP2));
    }
    match points.first() {
        Some(p) => Ok(PathBuf::from(p)),
        None => bail!(
            "no cgroup2 filesystem is mounted (looked in /proc/mounts); \
             mount one: mount -t cgroup2 none {PREFERRED_CGROUP2}"
        ),
    }
}
