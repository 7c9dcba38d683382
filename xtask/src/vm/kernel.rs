//! Debian's kernels, fetched through a private apt configuration and
//! unpacked under [`super::CACHE`]`/kernels/SUITE-FLAVOUR/`:
//!
//! - `root/boot/vmlinuz-VER` (virtme-ng finds `root/lib/modules/VER` from it)
//!   and `vmlinuz`, a link to it
//! - `root/lib/modules/VER`, with module dependencies (`depmod`)
//! - `config`, `version` (uname -r)
//!
//! Not under /var/cache: virtme-ng mounts tmpfs over it in the guest.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::suite_apt::SuiteApt;
use crate::sh;

/// The Debian suites whose kernels the matrix boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Debian 11, Linux 5.10
    Bullseye,
    /// Debian 12, Linux 6.1
    Bookworm,
    /// Debian 13, Linux 6.12
    Trixie,
    /// unstable, the newest kernel
    Sid,
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Suite::Bullseye => "bullseye",
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
            Suite::Sid => "sid",
        })
    }
}

/// The architecture and page size of a kernel build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Amd64,
    Arm64,
    /// arm64 with 16 KiB pages, as the Raspberry Pi 5's kernel is built
    /// (Debian: `linux-image-arm64-16k`, from trixie on).
    Arm64_16k,
}

impl Flavour {
    /// The Debian architecture.
    pub fn arch(self) -> &'static str {
        match self {
            Flavour::Amd64 => "amd64",
            Flavour::Arm64 | Flavour::Arm64_16k => "arm64",
        }
    }

    /// The flavour's name: the meta package's suffix and the cache's.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Amd64 => "amd64",
            Flavour::Arm64 => "arm64",
            Flavour::Arm64_16k => "arm64-16k",
        }
    }
}

/// An unpacked kernel.
pub struct Kernel {
    pub dir: PathBuf,
    pub version: String,
}

impl Kernel {
    /// The image virtme-ng boots; its modules are found beside it.
    pub fn image(&self) -> PathBuf {
        self.dir
            .join("root/boot")
            .join(format!("vmlinuz-{}", self.version))
    }

    pub fn modules(&self) -> PathBuf {
        self.dir.join("root/lib/modules").join(&self.version)
    }
}

/// The kernel of `suite`/`flavour`, fetched and unpacked unless present.
pub fn ensure(cache: &Path, suite: Suite, flavour: Flavour) -> Result<Kernel> {
    let dir = cache
        .join("kernels")
        .join(format!("{suite}-{}", flavour.name()));
    if let Ok(version) = std::fs::read_to_string(dir.join("version")) {
        let k = Kernel {
            dir: dir.clone(),
            version: version.trim().to_string(),
        };
        if k.image().is_file() {
            return Ok(k);
        }
    }
    fetch(cache, suite, flavour, &dir)
        .with_context(|| format!("fetching the {suite} {} kernel", flavour.name()))
}

fn fetch(cache: &Path, suite: Suite, flavour: Flavour, dir: &Path) -> Result<Kernel> {
    let apt = SuiteApt::new(cache, &suite.to_string(), flavour.arch())?;
    apt.update()?;
    let meta = format!("linux-image-{}", flavour.name());
    let policy = sh::read(&mut apt.cache(["policy", &meta]))?;
    let version = candidate(&policy).with_context(|| format!("no candidate for `{meta}`"))?;
    let show = sh::read(&mut apt.cache(["show", &format!("{meta}={version}")]))?;
    let pkg = image_package(&show).with_context(|| format!("no image package in `{meta}`"))?;
    println!("kernel {suite} {}: {pkg}", flavour.name());
    let work = cache
        .join("tmp")
        .join(format!("{suite}-{}", flavour.name()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let debs = download(&apt, &work, &pkg)?;
    let x = work.join("x");
    for deb in &debs {
        sh::run(sh::cmd("dpkg-deb", ["-x"]).arg(deb).arg(&x))?;
    }
    let staged = work.join("out");
    let version = lay_out(&x, &staged)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.parent().context("kernel dir has no parent")?)?;
    std::fs::rename(&staged, dir)
        .with_context(|| format!("moving the kernel to {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(Kernel {
        dir: dir.to_path_buf(),
        version,
    })
}

/// Downloads `pkg` into `work`, plus the parts it depends on when it is
/// split (sid's 7.x `linux-image-VER` is empty and depends on
/// `linux-binary-VER`, `linux-modules-VER`, `linux-base-VER`).
fn download(apt: &SuiteApt, work: &Path, pkg: &str) -> Result<Vec<PathBuf>> {
    sh::run(apt.get(["download", pkg]).current_dir(work))?;
    let deb = only_deb(work)?;
    let contents = sh::read(sh::cmd("dpkg-deb", ["-c"]).arg(&deb))?;
    if has_vmlinuz(&contents) {
        return Ok(vec![deb]);
    }
    let depends = sh::read(sh::cmd("dpkg-deb", ["-f"]).arg(&deb).arg("Depends"))?;
    let parts = split_parts(&depends);
    if parts.is_empty() {
        bail!("{pkg} has no kernel image and depends on no image parts: {depends}");
    }
    let mut c = apt.get(["download"]);
    c.args(&parts).current_dir(work);
    sh::run(&mut c)?;
    debs_in(work)
}

fn only_deb(dir: &Path) -> Result<PathBuf> {
    match debs_in(dir)?.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!(
            "expected one .deb in {}, found {}",
            dir.display(),
            other.len()
        ),
    }
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    Ok(debs)
}

/// Moves image, config and modules from the unpacked packages `x` into the
/// cache layout at `out`; returns the kernel version.
fn lay_out(x: &Path, out: &Path) -> Result<String> {
    let (image, config, version) = find_image(x)?;
    let boot = out.join("root/boot");
    std::fs::create_dir_all(&boot)?;
    std::fs::create_dir_all(out.join("root/lib/modules"))?;
    std::fs::rename(&image, boot.join(format!("vmlinuz-{version}")))?;
    std::fs::rename(&config, out.join("config"))?;
    let modules = [x.join("usr/lib/modules"), x.join("lib/modules")]
        .into_iter()
        .map(|m| m.join(&version))
        .find(|m| m.is_dir())
        .context("no modules directory in the kernel packages")?;
    let dest = out.join("root/lib/modules").join(&version);
    std::fs::rename(&modules, &dest)?;
    std::os::unix::fs::symlink(format!("root/boot/vmlinuz-{version}"), out.join("vmlinuz"))?;
    // The packages ship without modules.dep; the guest's modprobe needs it.
    sh::run(
        sh::cmd("depmod", ["-b"])
            .arg(out.join("root"))
            .arg(&version),
    )?;
    std::fs::write(out.join("version"), format!("{version}\n"))?;
    Ok(version)
}

/// (image, config, version): `boot/vmlinuz-VER` + `boot/config-VER`, or
/// (sid 7.x) `usr/lib/modules/VER/vmlinuz` + `config` beside it.
fn find_image(x: &Path) -> Result<(PathBuf, PathBuf, String)> {
    if let Ok(entries) = std::fs::read_dir(x.join("boot")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("vmlinuz-") {
                return Ok((
                    e.path(),
                    x.join("boot").join(format!("config-{v}")),
                    v.to_string(),
                ));
            }
        }
    }
    for e in std::fs::read_dir(x.join("usr/lib/modules"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().join("vmlinuz").is_file() {
            let v = e.file_name().to_string_lossy().into_owned();
            return Ok((e.path().join("vmlinuz"), e.path().join("config"), v));
        }
    }
    bail!(
        "no vmlinuz in the unpacked kernel packages at {}",
        x.display()
    )
}

/// The candidate version in `apt-cache policy PKG` output.
pub fn candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
}

/// The versioned image package that the first stanza of `apt-cache show
/// linux-image-ARCH=VERSION` depends on.
pub fn image_package(show: &str) -> Option<String> {
    let stanza = show.split("\n\n").next()?;
    let depends = stanza.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends
        .split(',')
        .map(|d| d.trim().split(' ').next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
}

/// Whether `dpkg-deb -c` output lists a kernel image.
fn has_vmlinuz(contents: &str) -> bool {
    contents
        .lines()
        .any(|l| l.contains("/boot/vmlinuz-") || l.ends_with("/vmlinuz"))
}

/// The image parts a split `linux-image-VER` package depends on.
pub fn split_parts(depends: &str) -> Vec<String> {
    depends
        .split(',')
        .flat_map(|d| d.split('|'))
        .map(|d| d.trim().split(' ').next().unwrap_or(""))
        .filter(|d| {
            ["linux-binary-", "linux-modules-", "linux-base-"]
                .iter()
                .any(|p| d.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meta_package_names_the_image() {
        let show = "Package: linux-image-amd64\nVersion: 6.1.158-1\n\
                    Depends: linux-image-6.1.0-41-amd64 (= 6.1.158-1)\n\n\
                    Package: linux-image-amd64\nVersion: 6.1.140-1\n\
                    Depends: linux-image-6.1.0-37-amd64 (= 6.1.140-1)\n";
        assert_eq!(
            image_package(show).as_deref(),
            Some("linux-image-6.1.0-41-amd64")
        );
        assert_eq!(image_package("Package: x\n"), None);
    }

    #[test]
    fn candidates() {
        let policy =
            "linux-image-amd64:\n  Installed: (none)\n  Candidate: 5.10.244-1\n  Version table:\n";
        assert_eq!(candidate(policy).as_deref(), Some("5.10.244-1"));
        assert_eq!(candidate("x:\n  Candidate: (none)\n"), None);
    }

    #[test]
    fn split_packages_name_their_parts() {
        let dep = "linux-binary-7.2.1+deb14-amd64 (= 7.2.1-1), linux-modules-7.2.1+deb14-amd64 (= 7.2.1-1), \
                   linux-base-7.2.1+deb14-amd64 | foo, kmod";
        assert_eq!(
            split_parts(dep),
            [
                "linux-binary-7.2.1+deb14-amd64",
                "linux-modules-7.2.1+deb14-amd64",
                "linux-base-7.2.1+deb14-amd64"
            ]
        );
        assert!(split_parts("kmod, linux-base").is_empty());
    }

    #[test]
    fn vmlinuz_in_listings() {
        assert!(has_vmlinuz(
            "-rw-r--r-- root/root 8 2024 ./boot/vmlinuz-6.1.0-41-amd64\n"
        ));
        assert!(has_vmlinuz(
            "-rw-r--r-- root/root 8 2024 ./usr/lib/modules/7.2/vmlinuz\n"
        ));
        assert!(!has_vmlinuz(
            "drwxr-xr-x root/root 0 2024 ./usr/share/doc/\n"
        ));
    }
}
