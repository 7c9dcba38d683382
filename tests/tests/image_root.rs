//! The container image's own root filesystem runs bpfproxy on this kernel:
//! its binary, its libraries and its program interpreter, nothing of the
//! host's. `cargo xtask test` exports the root of the image it built
//! (`podman export`) and names it in `BPFPROXY_IMAGE_ROOT`: the amd64 image
//! on this machine, the arm64 image in the kernel matrix's arm64 VMs.
use std::process::Command;

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::require_root;

/// `bpfproxy ARGS` chrooted into the image's root.
fn in_image(args: &[&str]) -> Result<std::process::Output> {
    let root = std::env::var_os("BPFPROXY_IMAGE_ROOT").context(
        "BPFPROXY_IMAGE_ROOT names no image root: `cargo xtask test` exports the image's \
         root filesystem and sets it",
    )?;
    Command::new("chroot")
        .arg(&root)
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
    // preflight loads every program into this kernel (no bpffs or cgroup
    // needed for that); the chroot has neither, so only the program rows
    // are asserted.
    let out = in_image(&["preflight", "--json"])?;
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
