//! `bpfproxy preflight` on this machine: the kernel, the program types and
//! helpers, and every program through the verifier; exit codes for scripts.
use std::process::Command;

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{bpfproxy_bin, require_root, PrivateBpffs};

/// `bpfproxy preflight --json ARGS`: (exit code, report).
fn preflight(args: &[&str]) -> Result<(i32, serde_json::Value)> {
    let out = Command::new(bpfproxy_bin()?)
        .arg("preflight")
        .arg("--json")
        .args(args)
        .output()
        .context("running bpfproxy preflight")?;
    let report = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("preflight output: {out:?}"))?;
    Ok((out.status.code().unwrap_or(-1), report))
}

fn status_of<'a>(report: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    report["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["status"].as_str())
}

#[test]
fn every_program_passes_this_kernels_verifier_and_preflight_exits_0() -> Result<()> {
    require_root()?;
    let bpffs = PrivateBpffs::new("preflight")?;
    let pins = bpffs.path().join("bpfproxy");
    let (code, report) = preflight(&["--bpffs", &pins.display().to_string()])?;
    println!("{report:#}");
    ensure!(code == 0, "exit code {code}: {report}");
    for program in [
        "sock4_connect",
        "sock6_getpeername",
        "tc_ingress",
        "tc_reply_l3",
    ] {
        let name = format!("program {program}");
        ensure!(status_of(&report, &name) == Some("ok"), "{name}: {report}");
    }
    for name in [
        "kernel",
        "cgroup v2",
        "helper bpf_fib_lookup",
        "helper bpf_redirect_neigh",
        // Closes a connected UDP socket of its own through sock_diag.
        "UDP socket destroy",
    ] {
        ensure!(status_of(&report, name) == Some("ok"), "{name}: {report}");
    }
    let left: Vec<_> = std::fs::read_dir(bpffs.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bpfproxy-preflight"))
        .collect();
    ensure!(left.is_empty(), "scratch pins left behind: {left:?}");
    Ok(())
}

#[test]
fn without_a_bpffs_the_programs_are_not_verified_which_only_strict_fails() -> Result<()> {
    require_root()?;
    let dir = tempfile::tempdir()?;
    let pins = dir.path().join("bpfproxy");
    let pins = pins.display().to_string();
    let (code, report) = preflight(&["--bpffs", &pins])?;
    ensure!(code == 0, "degraded still runs: exit {code}: {report}");
    ensure!(status_of(&report, "bpffs") == Some("degraded"), "{report}");
    ensure!(
        status_of(&report, "programs") == Some("degraded"),
        "{report}"
    );
    let (strict, _) = preflight(&["--bpffs", &pins, "--strict"])?;
    ensure!(strict == 2, "--strict: exit {strict}");
    Ok(())
}
