//! bpf-linker 0.13.0, linked against the libLLVM that the nightly toolchain
//! ships (Debian's LLVM is too old).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{procs, sh, workspace};

pub const VERSION: &str = "0.13.0";
/// What a bpf-linker build in progress looks like on a command line.
const BUILD_PATTERN: &str = "cargo install bpf-linker";
/// How long to wait for somebody else's build before giving up.
const WAIT_LIMIT: Duration = Duration::from_secs(20 * 60);

/// The version `bpf-linker --version` reports (PATH already holds cargo's bin
/// directory), if it runs at all.
fn installed_version() -> Option<String> {
    let out = sh::probe(&mut sh::cmd("bpf-linker", ["--version"]))?;
    out.split_whitespace().nth(1).map(str::to_string)
}

/// Installs bpf-linker unless the right version already runs.
pub fn ensure() -> Result<()> {
    if installed_version().as_deref() == Some(VERSION) {
        println!("bpf-linker {VERSION}: present");
        return Ok(());
    }
    if wait_for_other_build()? && installed_version().as_deref() == Some(VERSION) {
        println!("bpf-linker {VERSION}: installed by the other build");
        return Ok(());
    }
    install()?;
    match installed_version() {
        Some(v) if v == VERSION => Ok(()),
        other => bail!(
            "bpf-linker was installed but `bpf-linker --version` reports {other:?}, \
             not {VERSION} (is another bpf-linker earlier on PATH?)"
        ),
    }
}

/// Waits while another `cargo install bpf-linker` runs; true if there was one.
fn wait_for_other_build() -> Result<bool> {
    let others = || -> Result<Vec<u32>> {
        Ok(procs::list()?
            .into_iter()
            .filter(|p| p.cmdline.contains(BUILD_PATTERN))
            .map(|p| p.pid)
            .collect())
    };
    let first = others()?;
    if first.is_empty() {
        return Ok(false);
    }
    println!(
        "bpf-linker: another build is running (pids {first:?}); waiting for it \
         instead of starting a second one (up to {} min)",
        WAIT_LIMIT.as_secs() / 60
    );
    let start = Instant::now();
    let mut last_note = Instant::now();
    loop {
        if others()?.is_empty() {
            println!(
                "bpf-linker: the other build ended after {:.0?}",
                start.elapsed()
            );
            return Ok(true);
        }
        if start.elapsed() > WAIT_LIMIT {
            bail!(
                "another `{BUILD_PATTERN}` has been running for over {} min; \
                 stop it or let it finish, then rerun setup",
                WAIT_LIMIT.as_secs() / 60
            );
        }
        if last_note.elapsed() > Duration::from_secs(30) {
            println!("bpf-linker: still waiting ({:.0?})", start.elapsed());
            last_note = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The nightly toolchain's lib directory and its libLLVM (file stem without
/// `lib`, e.g. `LLVM-22-rust-1.97.0-nightly`).
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let sysroot = sh::read(&mut sh::cmd(
        "rustup",
        ["run", "nightly", "rustc", "--print", "sysroot"],
    ))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let entries =
        std::fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so")) {
            if stem.starts_with("LLVM-") && stem.contains("-rust-") && stem.ends_with("-nightly") {
                return Ok((lib, stem.to_string()));
            }
        }
    }
    bail!(
        "no libLLVM-*-rust-*-nightly.so in {}: the nightly toolchain ships no \
         libLLVM to link bpf-linker against",
        lib.display()
    )
}

fn install() -> Result<()> {
    let (lib, llvm) = nightly_llvm()?;
    // "LLVM-22-rust-..." -> "22": bpf-linker's feature for that LLVM.
    let major = llvm
        .strip_prefix("LLVM-")
        .and_then(|r| r.split('-').next())
        .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM major version from {llvm}"))?;
    let lib = lib.display();
    println!(
        "bpf-linker: building {VERSION} against nightly's lib{llvm}.so \
         (takes about 3 minutes, once per machine)"
    );
    let mut c = sh::cmd(
        "cargo",
        [
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major},no-llvm-linking"),
        ],
    );
    c.current_dir(workspace::root()).env(
        "RUSTFLAGS",
        format!("-L native={lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}"),
    );
    sh::run(&mut c)
}
