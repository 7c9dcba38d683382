//! The container image's own root filesystem runs bpfproxy on this kernel:
//! its binary, its libraries and its program interpreter, nothing of the
//! host's. `cargo xtask test` exports the root of the image it built
//! (`podman export`) and names it in `BPFPROXY_IMAGE_ROOT`: the amd64 image
//! on this machine, the arm64 image in the kernel matrix's arm64 VMs.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{bpffs, require_root};

/// The exported image root.
fn image_root() -> Result<PathBuf> {
    let root = std::env::var_os("BPFPROXY_IMAGE_ROOT").context(
        "BPFPROXY_IMAGE_ROOT names no image root: `cargo xtask test` exports the image's \
         root filesystem and sets it",
    )?;
    Ok(PathBuf::from(root))
}

/// A bpffs mounted on the image root's /tmp for the test (mounting needs
/// no write to the root, which the arm64 VMs share read-only), unmounted
/// on drop.
struct BpffsInImage(PathBuf);

impl BpffsInImage {
    fn mount(root: &Path) -> Result<Self> {
        let at = root.join("tmp");
        bpffs::mount(&at)?;
        Ok(Self(at))
    }
}

impl Drop for BpffsInImage {
    fn drop(&mut self) {
        let _ = bpffs::umount_lazy(&self.0);
    }
}

/// `bpfproxy ARGS` chrooted into the image's root.
fn in_image(args: &[&str]) -> Result<std::process::Output> {
    Command::new("chroot")
        .arg(image_root()?)
        .arg("/usr/local/bin/bpfproxy")
        .args(args)
        .output()
        .context("running chroot")
}

#[test]
fn the_images_root_runs_bpfproxy_and_its_programs_load_on_this_kernel() -> Result<()> {
    require_root()?;
    let out = in_image(&["--version"])?;
    let version = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && version.contains(env!("CARGO_PKG_VERSION")),
        "bpfproxy --version in the image: {out:?}"
    );
    // preflight loads every program into this kernel against a bpffs (the
    // one mounted on the image's /tmp); the chroot has no cgroup2 or /proc,
    // so only the program rows are asserted.
    let _bpffs = BpffsInImage::mount(&image_root()?)?;
    let out = in_image(&["preflight", "--bpffs", "/tmp/bpfproxy", "--json"])?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("preflight --json in the image: {out:?}"))?;
    let checks = report["checks"].as_array().context("no checks")?;
    let programs: Vec<&serde_json::Value> = checks
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("program "))
        })
        .collect();
    ensure!(programs.len() >= 6, "program rows: {programs:?}");
    for p in &programs {
        ensure!(p["status"] == "ok", "a program does not load: {p}");
    }
    eprintln!(
        "{} programs load from the image's root on {}",
        programs.len(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    Ok(())
}
