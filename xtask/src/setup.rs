//! `cargo xtask setup`: everything the build and the tests need on a fresh
//! Debian 12 machine, installed only when missing (seconds when all is there).

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::vm::{Arch, Suite};
use crate::{apt, bpf_linker, sh, vm, workspace};

/// What to set up.
#[derive(Default)]
pub struct Options {
    /// Install missing Debian packages (needs root).
    pub apt: bool,
    /// Also the VM tools and these kernels (`--kernel`, `--arch`).
    pub kernels: Vec<(Suite, Arch)>,
}

/// `cargo xtask setup`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also install the VM tools (QEMU, virtme-ng) and fetch these Debian
    /// suites' kernels for `cargo xtask test --kernel`.
    #[arg(long, value_enum, value_delimiter = ',')]
    kernel: Vec<Suite>,
    /// The architectures of those kernels; arm64 adds the cross linker,
    /// the Rust target, qemu-system-arm and an arm64 root filesystem.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "amd64")]
    arch: Vec<Arch>,
}

impl Args {
    pub fn options(&self) -> Options {
        let kernels = self
            .kernel
            .iter()
            .flat_map(|s| self.arch.iter().map(move |a| (*s, *a)))
            .collect();
        Options { apt: true, kernels }
    }
}

pub fn run(opts: &Options) -> Result<()> {
    let start = Instant::now();
    if opts.apt {
        apt::ensure().context("setting up Debian packages")?;
    } else {
        println!("apt packages: skipped");
    }
    host_toolchain().context("checking the pinned host toolchain")?;
    nightly().context("setting up the nightly toolchain for eBPF")?;
    bpf_linker::ensure().context("setting up bpf-linker")?;
    nextest().context("setting up cargo-nextest")?;
    if !opts.kernels.is_empty() {
        vm::ensure(&opts.kernels).context("setting up VMs for other kernels")?;
    }
    println!("setup: done in {:.1?}", start.elapsed());
    Ok(())
}

/// The toolchain rust-toolchain.toml pins, with rustfmt and clippy.
fn host_toolchain() -> Result<()> {
    let root = workspace::root();
    let mut version = sh::cmd("rustc", ["--version"]);
    version.current_dir(&root);
    let Some(version) = sh::probe(&mut version) else {
        bail!(
            "the toolchain pinned in rust-toolchain.toml is not installed \
             (rustup cannot download toolchains here)"
        );
    };
    let mut list = sh::cmd("rustup", ["component", "list", "--installed"]);
    list.current_dir(&root);
    let installed = sh::read(&mut list)?;
    let missing = missing_components(&installed, &["rustfmt", "clippy"]);
    if !missing.is_empty() {
        let mut add = sh::cmd("rustup", ["component", "add"]);
        add.args(&missing).current_dir(&root);
        sh::run(&mut add)?;
    }
    println!("host toolchain: {}", version.trim());
    Ok(())
}

/// The preinstalled nightly, with rust-src (for build-std) and clippy.
fn nightly() -> Result<()> {
    let Some(version) = sh::probe(&mut sh::cmd(
        "rustup",
        ["run", "nightly", "rustc", "--version"],
    )) else {
        bail!(
            "no nightly toolchain (`rustup run nightly rustc --version` fails); \
             the eBPF crate needs the machine's preinstalled nightly, and no \
             other toolchain can be downloaded here"
        );
    };
    let installed = sh::read(&mut sh::cmd(
        "rustup",
        ["component", "list", "--toolchain", "nightly", "--installed"],
    ))?;
    let missing = missing_components(&installed, &["rust-src", "clippy"]);
    if !missing.is_empty() {
        let mut add = sh::cmd("rustup", ["component", "add", "--toolchain", "nightly"]);
        add.args(&missing);
        sh::run(&mut add)?;
    }
    println!("nightly toolchain: {}", version.trim());
    Ok(())
}

/// Components of `wanted` absent from `rustup component list --installed`
/// output (lines like `rust-src` or `clippy-x86_64-unknown-linux-gnu`).
fn missing_components<'a>(installed: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|w| {
            !installed
                .lines()
                .map(str::trim)
                .any(|l| l == *w || l.strip_prefix(w).is_some_and(|rest| rest.starts_with('-')))
        })
        .collect()
}

fn nextest() -> Result<()> {
    if let Some(v) = sh::probe(&mut sh::cmd("cargo", ["nextest", "--version"])) {
        println!("{}", v.lines().next().unwrap_or("cargo-nextest").trim());
        return Ok(());
    }
    println!("cargo-nextest: missing, installing (takes a few minutes)");
    let mut c = sh::cmd("cargo", ["install", "cargo-nextest", "--locked"]);
    c.current_dir(workspace::root());
    sh::run(&mut c)
}

#[cfg(test)]
mod tests {
    use super::missing_components;

    #[test]
    fn components() {
        let list = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n";
        assert!(missing_components(list, &["rust-src", "clippy"]).is_empty());
        assert_eq!(missing_components(list, &["rustfmt"]), vec!["rustfmt"]);
        assert_eq!(missing_components("", &["rust-src"]), vec!["rust-src"]);
    }
}
