//! A private bpffs mount per test: the agent pins its maps and links there,
//! so parallel tests never share (or clobber) each other's pins, and
//! unmounting releases everything the test pinned.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// statfs(2) f_type of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// `/tmp/bpfpt-<pid>-<suffix>` with a bpffs mounted on it; unmounted (lazily
/// if busy) and removed on drop.
#[derive(Debug)]
pub struct PrivateBpffs {
    path: PathBuf,
    _claim: crate::NameClaim,
}

impl PrivateBpffs {
    pub fn new(suffix: &str) -> Result<Self> {
        let (name, claim) = crate::claim("bpffs", suffix)?;
        let path = std::env::temp_dir().join(name);
        if path.exists() {
            cleanup(&path); // stale, from a crashed process that had our pid
        }
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let fs = PrivateBpffs {
            path,
            _claim: claim,
        };
        mount(&fs.path)?;
        if !is_bpffs(&fs.path) {
            bail!("{} is not a bpffs after mounting", fs.path.display());
        }
        Ok(fs)
    }

    /// The mount point, for `bpfproxy --bpffs`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        cleanup(&self.path);
    }
}

/// Mounts a bpf filesystem on the directory `path`.
pub fn mount(path: &Path) -> Result<()> {
    let target = cstr(path)?;
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("mount -t bpf bpf {}: {e}", path.display());
    }
    Ok(())
}

/// Detaches the mount on `path` at once, even while something holds it
/// open (MNT_DETACH).
pub fn umount_lazy(path: &Path) -> Result<()> {
    let c = cstr(path)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("umount {}: {e}", path.display());
    }
    Ok(())
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = cstr(path) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    t == BPF_FS_MAGIC
}

/// Whether `path` is a mount point listed in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

fn cstr(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

fn cleanup(path: &Path) {
    let Ok(c) = cstr(path) else { return };
    // Unmount every layer (a stale dir may carry more than one mount).
    for _ in 0..4 {
        if !is_mounted(path) {
            break;
        }
        // SAFETY: c is a valid path string.
        let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                // SAFETY: as above; MNT_DETACH detaches now, frees later.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            } else {
                eprintln!("bpfproxy-tests: umount {}: {e}", path.display());
                break;
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("bpfproxy-tests: cannot remove {}: {e}", path.display());
        }
    }
}
