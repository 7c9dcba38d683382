//! `cargo xtask image`: the container image the DaemonSet runs, built from
//! scratch (no base image is pulled from anywhere; no registry is needed):
//! the `bpfproxy` binary and the shared libraries it links, nothing else.
//! buildah (Debian's) assembles it into the local container storage as
//! `bpfproxy:<version>` and writes an OCI archive under `target/image/`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{setup, sh, workspace};

/// The image's name; its tag is the workspace version.
pub const NAME: &str = "bpfproxy";
/// Where the binary sits in the image (the DaemonSet runs it by the
/// entrypoint, with `run` or `preflight` as arguments).
const BINARY_IN_IMAGE: &str = "/usr/local/bin/bpfproxy";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Package the debug build (for the tests: no release build needed).
    #[arg(long)]
    pub debug: bool,
}

/// `bpfproxy:<version>`.
pub fn tag() -> String {
    format!("{NAME}:{}", env!("CARGO_PKG_VERSION"))
}

pub fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Options {
        apt: true,
        ..Default::default()
    })?;
    let root = workspace::root();
    let profile = if args.debug { "debug" } else { "release" };
    if !args.debug {
        sh::run(Command::new("cargo").current_dir(&root).args([
            "build",
            "--release",
            "-p",
            "proxy-agent",
        ]))?;
    }
    let binary = workspace::target_dir()?.join(profile).join("bpfproxy");
    ensure!(
        binary.is_file(),
        "{} is missing: build it first",
        binary.display()
    );
    build(&binary)
}

/// The image of `binary` as [`tag`], and its OCI archive.
pub fn build(binary: &Path) -> Result<()> {
    let out = workspace::target_dir()?.join("image");
    let rootfs = out.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).with_context(|| format!("{}", rootfs.display()))?;
    }
    fill_rootfs(&rootfs, binary)?;
    let tag = tag();
    let archive = out.join(format!(
        "{NAME}-{}-{}.tar",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    ));
    let container = buildah(&["from", "scratch"])?;
    let result = (|| -> Result<()> {
        buildah(&["copy", &container, &rootfs.display().to_string(), "/"])?;
        let entrypoint = format!("[\"{BINARY_IN_IMAGE}\"]");
        buildah(&[
            "config",
            "--entrypoint",
            &entrypoint,
            "--cmd",
            "[\"--help\"]",
            &container,
        ])?;
        buildah(&["commit", "--rm", &container, &tag])?;
        Ok(())
    })();
    if result.is_err() {
        let _ = buildah(&["rm", &container]);
    }
    result?;
    let _ = std::fs::remove_file(&archive);
    buildah(&[
        "push",
        &tag,
        &format!("oci-archive:{}:{tag}", archive.display()),
    ])?;
    println!(
        "image {tag} in the local container storage; OCI archive {}",
        archive.display()
    );
    Ok(())
}

/// `binary` at [`BINARY_IN_IMAGE`] and every shared library `ldd` says it
/// loads, at their own paths, plus an empty /tmp.
fn fill_rootfs(rootfs: &Path, binary: &Path) -> Result<()> {
    let ldd = sh::read(Command::new("ldd").arg(binary))?;
    let mut files = vec![(binary.to_path_buf(), PathBuf::from(BINARY_IN_IMAGE))];
    files.extend(libraries(&ldd).into_iter().map(|l| (l.clone(), l)));
    for (from, to) in files {
        let dest = rootfs.join(to.strip_prefix("/").unwrap_or(&to));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Follow symlinks: the image gets the library itself.
        std::fs::copy(&from, &dest)
            .with_context(|| format!("copying {} into the image", from.display()))?;
    }
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    Ok(())
}

/// The libraries of an `ldd` listing: `name => /path (addr)` lines and the
/// loader's own `/path (addr)` line; the vDSO has no file.
pub fn libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => l.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `buildah ARGS` (VFS storage works everywhere, also inside containers);
/// its trimmed stdout.
fn buildah(args: &[&str]) -> Result<String> {
    let out = sh::read(Command::new("buildah").args(args))?;
    let out = out.trim().to_string();
    if out.is_empty() && args.first() == Some(&"from") {
        bail!("buildah from printed no container name");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_listings_give_every_library_file_and_the_loader() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f76)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f75)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f77)\n";
        assert_eq!(
            libraries(ldd),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_tag_is_the_workspace_version() {
        assert_eq!(tag(), format!("bpfproxy:{}", env!("CARGO_PKG_VERSION")));
    }
}
