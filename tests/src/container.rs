//! Running the bpfproxy container image (`cargo xtask image`) with podman,
//! as root, on these machines: runc rather than crun (crun refuses the
//! hybrid cgroup layout), cgroupfs rather than systemd, and rlimits the
//! sandbox lets a container set (podman's defaults ask for more than the
//! machine's hard limits allow). A kubelet on a real node needs none of it.
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

/// The image the tests run: what `cargo xtask image` tags.
pub fn image() -> String {
    format!("bpfproxy:{}", env!("CARGO_PKG_VERSION"))
}

/// `podman` with the global options this machine needs.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--cgroup-manager=cgroupfs",
        "--events-backend=file",
        "--runtime=runc",
    ]);
    c
}

/// `podman run --rm` options every test container gets: the rlimits.
pub fn run_options() -> Vec<String> {
    let nofile = open_files_limit();
    vec![
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        // The agent needs a handful of threads; podman's default exceeds
        // what this machine lets a container set.
        "--ulimit".into(),
        "nproc=4096:4096".into(),
    ]
}

fn open_files_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur.min(65_536)
}

/// Fails with what to do when the image is not in the local storage.
pub fn require_image() -> Result<()> {
    let out = podman()
        .args(["image", "exists", &image()])
        .stdin(Stdio::null())
        .status()
        .context("running podman (cargo xtask setup installs it)")?;
    ensure!(
        out.success(),
        "image {} is not in the local container storage: run `cargo xtask image --debug` \
         (cargo xtask test does)",
        image()
    );
    Ok(())
}

/// A detached container, removed (killed) on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
