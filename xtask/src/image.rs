//! `cargo xtask image`: the container image the DaemonSet runs, built from
//! scratch (no base image is pulled from anywhere; no registry is needed):
//! the `bpfproxy` binary and the shared libraries it links, nothing else.
//! buildah (Debian's) assembles it into the local container storage and
//! writes an OCI archive under `target/image/`. One architecture: the image
//! is `bpfproxy:<version>`. amd64 and arm64 (the release default): each is
//! `bpfproxy:<version>-<arch>` and `bpfproxy:<version>` is their manifest
//! list, so a node pulls the image of its own architecture by one name.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use bpfproxy_tests::container::podman;

use crate::vm::arm64;
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
    /// The architectures (default: amd64 and arm64; with `--debug`, amd64).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub arch: Vec<ImageArch>,
}

/// An architecture the image is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageArch {
    Amd64,
    /// Cross-built for aarch64 (the toolchain `setup --arch arm64` adds).
    Arm64,
}

impl ImageArch {
    pub fn name(self) -> &'static str {
        match self {
            ImageArch::Amd64 => "amd64",
            ImageArch::Arm64 => "arm64",
        }
    }
}

/// `bpfproxy:<version>`.
pub fn tag() -> String {
    format!("{NAME}:{}", env!("CARGO_PKG_VERSION"))
}

pub fn run(args: &Args) -> Result<()> {
    let arches = match (args.arch.is_empty(), args.debug) {
        (false, _) => args.arch.clone(),
        (true, true) => vec![ImageArch::Amd64],
        (true, false) => vec![ImageArch::Amd64, ImageArch::Arm64],
    };
    setup::run(&setup::Options {
        apt: true,
        ..Default::default()
    })?;
    if arches.contains(&ImageArch::Arm64) {
        // The cross linker and the Rust target; no kernel is fetched.
        crate::vm::host_tools::ensure(true)?;
        arm64::ensure_target(&workspace::root())?;
    }
    let profile = if args.debug { "debug" } else { "release" };
    let mut images = Vec::new();
    for arch in &arches {
        images.push((*arch, binary_for(*arch, profile)?));
    }
    if let [(ImageArch::Amd64, binary)] = images.as_slice() {
        return build(binary);
    }
    build_multi(&images)
}

/// Builds the agent for `arch` in `profile` and returns it.
fn binary_for(arch: ImageArch, profile: &str) -> Result<PathBuf> {
    let root = workspace::root();
    let target = workspace::target_dir()?;
    let mut c = match arch {
        ImageArch::Amd64 => {
            let mut c = Command::new("cargo");
            c.current_dir(&root).args(["build", "-p", "proxy-agent"]);
            c
        }
        ImageArch::Arm64 => arm64::cross_cargo(&root, ["build", "-p", "proxy-agent"]),
    };
    if profile == "release" {
        c.arg("--release");
    }
    sh::run(&mut c)?;
    let dir = match arch {
        ImageArch::Amd64 => target.join(profile),
        ImageArch::Arm64 => target.join(arm64::TARGET).join(profile),
    };
    let binary = dir.join("bpfproxy");
    ensure!(binary.is_file(), "the build made no {}", binary.display());
    Ok(binary)
}

/// One image per architecture, tagged `<tag>-<arch>`, and the manifest list
/// [`tag`] naming them all; the OCI archive holds every architecture.
pub fn build_multi(images: &[(ImageArch, PathBuf)]) -> Result<()> {
    let out = workspace::target_dir()?.join("image");
    let tag = tag();
    // A manifest list cannot be replaced in place: the old one goes first.
    let _ = buildah(&["manifest", "rm", &tag]);
    let _ = buildah(&["rmi", "-f", &tag]);
    buildah(&["manifest", "create", &tag])?;
    for (arch, binary) in images {
        let rootfs = out.join(format!("rootfs-{}", arch.name()));
        let arch_tag = format!("{tag}-{}", arch.name());
        commit_image(&rootfs, binary, *arch, &arch_tag)?;
        buildah(&[
            "manifest",
            "add",
            "--arch",
            arch.name(),
            &tag,
            &format!("containers-storage:localhost/{arch_tag}"),
        ])?;
    }
    let archive = out.join(format!("{NAME}-{}.tar", env!("CARGO_PKG_VERSION")));
    let _ = std::fs::remove_file(&archive);
    buildah(&[
        "manifest",
        "push",
        "--all",
        &tag,
        &format!("oci-archive:{}:{tag}", archive.display()),
    ])?;
    let names: Vec<&str> = images.iter().map(|(a, _)| a.name()).collect();
    println!(
        "manifest list {tag} ({}) in the local container storage; OCI archive {}",
        names.join(", "),
        archive.display()
    );
    Ok(())
}

/// The image of `binary` (the host's architecture) as [`tag`], and its OCI
/// archive.
pub fn build(binary: &Path) -> Result<()> {
    let out = workspace::target_dir()?.join("image");
    let tag = tag();
    commit_image(&out.join("rootfs"), binary, ImageArch::Amd64, &tag)?;
    let archive = out.join(format!(
        "{NAME}-{}-{}.tar",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    ));
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

/// The debug image of a cross-built aarch64 `binary`, tagged
/// `<tag>-arm64`, its root exported to `dest` (for the arm64 VMs).
pub fn arm64_debug_image(binary: &Path, dest: &Path) -> Result<()> {
    let out = workspace::target_dir()?.join("image");
    let arch_tag = format!("{}-arm64", tag());
    commit_image(
        &out.join("rootfs-arm64"),
        binary,
        ImageArch::Arm64,
        &arch_tag,
    )?;
    export_root(&arch_tag, ImageArch::Arm64, dest)
}

/// Where `cargo xtask test` unpacks the host's debug image's root.
pub fn host_export_dir() -> Result<PathBuf> {
    Ok(workspace::target_dir()?.join("image").join("export-amd64"))
}

/// The root filesystem of image `tag` as a container of it has it (`podman
/// create` + `podman export`), unpacked at `dest`: what the tests chroot
/// into to run the image's own binary and libraries.
pub fn export_root(tag: &str, arch: ImageArch, dest: &Path) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("{}", dest.display()))?;
    }
    std::fs::create_dir_all(dest)?;
    let id = sh::read(podman().args(["create", "--arch", arch.name(), tag]))?;
    let id = id.trim().to_string();
    let tar = dest.with_extension("tar");
    let exported = sh::run(podman().args(["export", "-o"]).arg(&tar).arg(&id));
    let _ = sh::run(podman().args(["rm", &id]));
    exported?;
    sh::run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dest))?;
    let _ = std::fs::remove_file(&tar);
    Ok(())
}

/// Fills `rootfs` with `binary` for `arch` and commits it as `tag`.
fn commit_image(rootfs: &Path, binary: &Path, arch: ImageArch, tag: &str) -> Result<()> {
    if rootfs.exists() {
        std::fs::remove_dir_all(rootfs).with_context(|| format!("{}", rootfs.display()))?;
    }
    let files = match arch {
        ImageArch::Amd64 => host_files(binary)?,
        ImageArch::Arm64 => cross_files(binary)?,
    };
    fill_rootfs(rootfs, &files)?;
    let container = buildah(&["from", "--arch", arch.name(), "scratch"])?;
    let result = (|| -> Result<()> {
        buildah(&["copy", &container, &rootfs.display().to_string(), "/"])?;
        let entrypoint = format!("[\"{BINARY_IN_IMAGE}\"]");
        buildah(&[
            "config",
            "--arch",
            arch.name(),
            "--os",
            "linux",
            "--entrypoint",
            &entrypoint,
            "--cmd",
            "[\"--help\"]",
            &container,
        ])?;
        buildah(&["commit", "--rm", &container, tag])?;
        Ok(())
    })();
    if result.is_err() {
        let _ = buildah(&["rm", &container]);
    }
    result
}

/// The files of a host binary's image: it and every library `ldd` names,
/// at their own paths.
fn host_files(binary: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let ldd = sh::read(Command::new("ldd").arg(binary))?;
    let mut files = vec![(binary.to_path_buf(), PathBuf::from(BINARY_IN_IMAGE))];
    files.extend(libraries(&ldd).into_iter().map(|l| (l.clone(), l)));
    Ok(files)
}

/// Where Debian's cross toolchain keeps the aarch64 libraries.
const CROSS_LIBS: &str = "/usr/aarch64-linux-gnu/lib";

/// The files of a cross-built aarch64 binary's image (no `ldd` for another
/// architecture): the libraries its dynamic section needs, from the cross
/// toolchain, where an arm64 Debian keeps them, and its program
/// interpreter.
fn cross_files(binary: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let readelf = sh::read(
        Command::new("aarch64-linux-gnu-readelf")
            .args(["-d", "-l", "-W"])
            .arg(binary),
    )?;
    let (needed, interpreter) = elf_dependencies(&readelf);
    let interpreter = interpreter.context("no program interpreter: not a dynamic binary?")?;
    let mut files = vec![(binary.to_path_buf(), PathBuf::from(BINARY_IN_IMAGE))];
    for lib in needed {
        let from = Path::new(CROSS_LIBS).join(&lib);
        files.push((from, Path::new("/lib/aarch64-linux-gnu").join(&lib)));
    }
    let name = Path::new(&interpreter)
        .file_name()
        .context("interpreter without a file name")?;
    files.push((
        Path::new(CROSS_LIBS).join(name),
        PathBuf::from(&interpreter),
    ));
    Ok(files)
}

/// `NEEDED` libraries and the program interpreter in `readelf -d -l` output.
pub fn elf_dependencies(readelf: &str) -> (Vec<String>, Option<String>) {
    let needed = readelf
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split_once('[').and_then(|(_, r)| r.split_once(']')))
        .map(|(lib, _)| lib.to_string())
        .collect();
    let interpreter = readelf.lines().find_map(|l| {
        let (_, r) = l.split_once("program interpreter: ")?;
        Some(r.trim_end_matches(']').trim().to_string())
    });
    (needed, interpreter)
}

/// Copies `files` (source, path in the image) into `rootfs`, plus an empty
/// /tmp.
fn fill_rootfs(rootfs: &Path, files: &[(PathBuf, PathBuf)]) -> Result<()> {
    for (from, to) in files {
        let dest = rootfs.join(to.strip_prefix("/").unwrap_or(to));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Follow symlinks: the image gets the library itself.
        std::fs::copy(from, &dest)
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
    fn a_cross_binarys_libraries_and_interpreter_come_from_readelf() {
        let readelf = "      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]\n\
             0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]\n\
             0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n\
             0x000000000000000c (INIT)               0x4a000\n";
        let (needed, interp) = elf_dependencies(readelf);
        assert_eq!(needed, ["libgcc_s.so.1", "libc.so.6"]);
        assert_eq!(interp.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
    }

    #[test]
    fn the_tag_is_the_workspace_version() {
        assert_eq!(tag(), format!("bpfproxy:{}", env!("CARGO_PKG_VERSION")));
    }
}
