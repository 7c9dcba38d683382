//! The bpf filesystem the pins live on: checking it is one, mounting the
//! node's at /sys/fs/bpf when missing, and the one-agent-per-pin-directory
//! lock.
use std::path::Path;

use anyhow::{bail, Context as _};
use tracing::info;

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The pin directory must be on a bpffs, or pinning fails with an obscure
/// error; say what to do instead.
pub fn check_bpffs(path: &Path) -> anyhow::Result<()> {
    // Many distributions leave /sys/fs/bpf unmounted; mount it as Cilium
    // does (with the DaemonSet's Bidirectional propagation it shows on the
    // host, so pins survive pod restarts).
    let default_root = Path::new("/sys/fs/bpf");
    if path.starts_with(default_root) && !is_bpffs(default_root)? {
        let src = std::ffi::CString::new("bpf")?;
        let dst = std::ffi::CString::new("/sys/fs/bpf")?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting bpffs on /sys/fs/bpf: {}",
                std::io::Error::last_os_error()
            );
        }
        info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    if !is_bpffs(path)? {
        bail!(
            "{} is not on a bpf filesystem; mount one first: mount -t bpf bpf /sys/fs/bpf",
            path.display()
        );
    }
    Ok(())
}

pub fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    Ok(fs_magic(path)? == BPF_FS_MAGIC)
}

/// The statfs magic number of the filesystem `path` is on.
pub fn fs_magic(path: &Path) -> anyhow::Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs across targets
    Ok(st.f_type as i64)
}

/// One agent per pin directory: two would fight over the same maps and
/// links (each pruning what the other programs). The lock is a flock on
/// the directory itself, so it holds across containers sharing the bpffs,
/// and goes with the process, however it ends.
pub fn lock_pins(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            bail!(
                "another bpfproxy agent runs on {} (one agent per node and bpffs; `bpfproxy dump` reads it without stopping it)",
                dir.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", dir.display()));
    }
    Ok(f)
}
