//! Finding the binaries the harness runs: the agent (`bpfproxy`) and `probe`.
//!
//! Test executables live in `target/<profile>/deps/`, xtask in
//! `target/<profile>/`; the binaries sit in `target/<profile>/`. An explicit
//! environment variable wins, for installed or cross-built binaries.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The agent binary: `$BPFPROXY_BIN`, else next to (or one level above) the
/// current executable.
pub fn bpfproxy_bin() -> Result<PathBuf> {
    find(
        "BPFPROXY_BIN",
        "bpfproxy",
        "build it first: `cargo build -p proxy-agent` (or `cargo build --workspace --bins`)",
    )
}

/// The `probe` client/server: `$BPFPROXY_PROBE_BIN`, else next to (or one
/// level above) the current executable. Integration tests of this crate can
/// pass `env!("CARGO_BIN_EXE_probe")` instead.
pub fn probe_bin() -> Result<PathBuf> {
    find(
        "BPFPROXY_PROBE_BIN",
        "probe",
        "build it first: `cargo build -p bpfproxy-tests --bins`",
    )
}

/// The L3 tunnel relay of the sandbox's `l3-tunnel` shape.
pub fn tunnel_bin() -> Result<PathBuf> {
    find(
        "BPFPROXY_TUNNEL_BIN",
        "tunnel",
        "build it first: `cargo build -p bpfproxy-tests --bins`",
    )
}

fn find(var: &str, name: &str, hint: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if is_file(&p) {
            return Ok(p);
        }
        bail!("{var}={} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("cannot find the current executable")?;
    let dir = exe
        .parent()
        .context("the current executable has no parent directory")?;
    let mut tried = Vec::new();
    for cand in [dir.join("..").join(name), dir.join(name)] {
        if is_file(&cand) {
            return Ok(cand.canonicalize().unwrap_or(cand));
        }
        tried.push(cand.display().to_string());
    }
    bail!(
        "the `{name}` binary was not found (set {var}, or looked at {}); {hint}",
        tried.join(", ")
    )
}

fn is_file(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file())
}

/// The JDK's `java` launcher: `$BPFPROXY_JAVA`, else `java` on the PATH.
/// `cargo xtask setup` installs Debian's openjdk-17-jdk-headless.
pub fn java_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BPFPROXY_JAVA").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("java"))
        .find(|p| is_file(p))
        .context(
            "no `java` on the PATH: the JVM client tests need a JDK \
             (`cargo xtask setup` installs openjdk-17-jdk-headless)",
        )
}

/// The single-file JVM test client, `tests/java/Probe.java`.
pub fn java_probe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("java")
        .join("Probe.java")
}
