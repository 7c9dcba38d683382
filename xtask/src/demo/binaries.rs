//! The binaries the demo runs: built here (after the toolchain setup), or
//! taken as they are with `--no-build`; either way checked before any
//! namespace exists.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::{setup, sh, workspace};

/// Setup (nightly rust-src, bpf-linker, the Debian packages, curl among
/// them) and build, unless `no_build`; returns the agent and probe binaries.
pub(super) fn build(no_build: bool) -> Result<(PathBuf, PathBuf)> {
    let root = workspace::root();
    if !no_build {
        setup::run(&setup::Options {
            apt: true,
            ..Default::default()
        })
        .context("setting up the toolchains")?;
        let mut c = sh::cmd(
            "cargo",
            [
                "build",
                "-p",
                "proxy-agent",
                "-p",
                "bpfproxy-tests",
                "--bins",
            ],
        );
        c.current_dir(&root);
        sh::run(&mut c).context("building bpfproxy")?;
    }
    let dir = workspace::target_dir()?.join("debug");
    let bins = (dir.join("bpfproxy"), dir.join("probe"));
    for b in [&bins.0, &bins.1] {
        if !b.is_file() {
            bail!(
                "{} is missing; run the demo without --no-build",
                b.display()
            );
        }
    }
    if !on_path("curl") {
        bail!("curl is missing; run the demo without --no-build (its setup installs curl)");
    }
    Ok(bins)
}

/// Whether `program` is an executable file in a PATH directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            dir.join(program)
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}
