//! Where things are: the repository root, cargo's target directory, cargo's
//! bin directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::sh;

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Cargo's target directory, as cargo itself resolves it (CARGO_TARGET_DIR,
/// `build.target-dir`, or `<root>/target`).
pub fn target_dir() -> Result<PathBuf> {
    let mut c = sh::cmd(
        "cargo",
        [
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ],
    );
    c.current_dir(root());
    let out = sh::read(&mut c)?;
    let meta: serde_json::Value =
        serde_json::from_str(&out).context("cannot parse `cargo metadata` output")?;
    let dir = meta
        .get("target_directory")
        .and_then(|v| v.as_str())
        .context("`cargo metadata` gave no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").join("bin"))
}

/// Puts cargo's bin directory (and `~/.cargo/bin`) at the front of PATH so
/// that tools `cargo install` put there (bpf-linker, cargo-nextest) are found
/// by us and by every child, aya-build included. Call before any thread starts.
pub fn ensure_cargo_bin_on_path() -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    dirs.extend(cargo_bin_dir());
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo").join("bin"));
    }
    let current: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let missing: Vec<PathBuf> =
        dirs.into_iter()
            .filter(|d| !current.contains(d))
            .fold(Vec::new(), |mut acc, d| {
                if !acc.contains(&d) {
                    acc.push(d);
                }
                acc
            });
    if missing.is_empty() {
        return Ok(());
    }
    let path = std::env::join_paths(missing.iter().chain(current.iter()))
        .context("cannot build PATH with cargo's bin directory")?;
    std::env::set_var("PATH", path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask` has to build on a machine where `cargo xtask setup`
    /// has not run yet, so nothing it depends on may need the eBPF
    /// toolchain (nightly's rust-src, bpf-linker): proxy-agent's build
    /// script compiles the kernel programs with it.
    #[test]
    fn xtask_builds_without_the_ebpf_toolchain() {
        let mut c = sh::cmd(
            "cargo",
            [
                "tree",
                "--package",
                "xtask",
                "--edges",
                "normal,build",
                "--prefix",
                "none",
                "--offline",
            ],
        );
        c.current_dir(root());
        let tree = sh::read(&mut c).expect("cargo tree");
        assert!(tree.contains("bpfproxy-tests"), "{tree}");
        for needs_ebpf in ["proxy-agent", "proxy-ebpf", "aya-build"] {
            assert!(
                !tree.lines().any(|l| l.starts_with(needs_ebpf)),
                "xtask depends on {needs_ebpf}: `cargo xtask setup` could not run on a fresh machine"
            );
        }
    }
}
