//! What the host needs to boot kernels in VMs: QEMU, virtme-ng and the
//! pieces virtme-ng relies on. Each is installed only when missing.

use anyhow::{bail, Context, Result};

use super::suite_apt::SuiteApt;
use crate::{apt, sh};

/// virtme-ng from PyPI, pinned: its guest init and command line change
/// between releases.
pub const VIRTME_NG: &str = "1.42";

/// Host packages from the system's own sources. virtme-ng runs `depmod`
/// (kmod) on unpacked kernels and without it crashes on a .deb kernel; its
/// guest init needs udevd for /dev/virtio-ports, else the command runs on
/// the serial console and its exit status is lost; busybox-static is the
/// initramfs.
const PACKAGES: &[&str] = &["kmod", "udev", "busybox-static", "cpio"];

/// For arm64 guests: a foreign root filesystem without emulation
/// (mmdebstrap), and the cross linker for the aarch64 Rust target.
const ARM64_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
];

/// Installs the VM tools for amd64 guests, and for arm64 guests if `arm64`.
pub fn ensure(arm64: bool) -> Result<()> {
    apt::ensure_packages("VM host packages", PACKAGES)?;
    if arm64 {
        apt::ensure_packages("arm64 cross packages", ARM64_PACKAGES)?;
    }
    qemu(arm64).context("installing QEMU from bookworm-backports")?;
    virtme_ng().context("installing virtme-ng")?;
    Ok(())
}

/// QEMU 10 from bookworm-backports: the machine image ships qemu-utils from
/// backports, and bookworm's own qemu-system 7.2 conflicts with it. The
/// backport comes through a private apt configuration.
fn qemu(arm64: bool) -> Result<()> {
    let mut wanted = vec![
        "qemu-system-x86",
        "qemu-system-common",
        "seabios",
        "ipxe-qemu",
    ];
    if arm64 {
        wanted.push("qemu-system-arm");
    }
    let missing = apt::missing(&wanted);
    if missing.is_empty() {
        println!("qemu: present");
        return Ok(());
    }
    let bpo = SuiteApt::new(super::CACHE.as_ref(), "bookworm-backports", "amd64")?;
    bpo.update()?;
    let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
    sh::run(&mut bpo.install("bookworm-backports", &missing))?;
    let still = apt::missing(&wanted);
    if !still.is_empty() {
        bail!(
            "after installing QEMU, {} are still missing",
            still.join(" ")
        );
    }
    Ok(())
}

fn virtme_ng() -> Result<()> {
    if let Some(v) = sh::probe(&mut sh::cmd("vng", ["--version"])) {
        if version_is(&v, VIRTME_NG) {
            println!("{}", v.trim());
            return Ok(());
        }
    }
    let pin = format!("virtme-ng=={VIRTME_NG}");
    sh::run(&mut sh::cmd(
        "python3",
        [
            "-m",
            "pip",
            "install",
            "-q",
            "--root-user-action=ignore",
            &pin,
        ],
    ))?;
    if sh::probe(&mut sh::cmd("vng", ["--version"])).is_none() {
        bail!("pip installed {pin} but `vng` is not on the PATH");
    }
    Ok(())
}

/// Whether `vng --version` output (`virtme-ng 1.42`) names version `pin`.
fn version_is(out: &str, pin: &str) -> bool {
    out.split_whitespace().any(|w| w == pin)
}

#[cfg(test)]
mod tests {
    use super::version_is;

    #[test]
    fn virtme_version() {
        assert!(version_is("virtme-ng 1.42\n", "1.42"));
        assert!(!version_is("virtme-ng 1.421\n", "1.42"));
        assert!(!version_is("", "1.42"));
    }
}
