//! The guest side: how the VM is sized and the shell line it runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bpfproxy_tests::process::quote;

use super::boot::Vm;
use super::kernel::Kernel;

/// 2 GiB and 2 vCPUs: the CI machines have 2 cores, and TCG runs one host
/// thread per vCPU; the tests' namespaces and agents fit in 2 GiB.
pub fn amd64_vm(k: &Kernel, timeout: Duration) -> Vm {
    Vm {
        image: k.image(),
        memory: "2G".into(),
        cpus: 2,
        overlays: Vec::new(),
        append: None,
        arm64: None,
        timeout,
    }
}

/// The guest's shell line: prepare what the tests expect of a host, then run
/// `command` in `cwd` with `env`.
pub fn script(cwd: &Path, env: &[(&str, String)], command: &str) -> String {
    let mut s = String::from("set -e; ");
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (64 KiB by
    // default there): every loader in the guest gets it unlimited.
    s += "ulimit -l unlimited; ";
    // virtme-ng mounts cgroup2 on /sys/fs/cgroup only on some kernels and
    // never a bpffs: the socket programs need the former, pins the latter.
    s += "grep -q ' cgroup2 ' /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup; ";
    s += "grep -q ' bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf; ";
    s += "mkdir -p /var/run/netns; ";
    s += &format!("cd {}; ", quote(cwd.as_os_str()));
    for (k, v) in env {
        s += &format!("export {k}={}; ", quote(v.as_ref()));
    }
    s += "set +e; ";
    s += command;
    s
}

/// Writes `script` to a file the guest can read and returns the short
/// command that runs it. virtme-ng passes the command on the kernel command
/// line, which 5.10 truncates at 2048 bytes: a long line hangs the guest.
pub fn script_file(name: &str, script: &str) -> Result<String> {
    let dir = Path::new(super::CACHE).join("run");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path: PathBuf = dir.join(format!("{name}.sh"));
    std::fs::write(&path, format!("{script}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!("sh {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_raises_memlock_and_runs_the_command_last() {
        let s = script(
            Path::new("/work/a b"),
            &[("BPFPROXY_BIN", "/t/bpfproxy".into())],
            "uname -r",
        );
        assert!(s.contains("ulimit -l unlimited;"), "{s}");
        assert!(s.contains("cd '/work/a b';"), "{s}");
        assert!(s.contains("export BPFPROXY_BIN=/t/bpfproxy;"), "{s}");
        assert!(s.ends_with("set +e; uname -r"), "{s}");
    }
}
