//! The cookie of a network namespace, as `bpf_get_netns_cookie` returns it
//! to the socket programs (which key session affinity by it).
use std::{fs::File, io, os::fd::AsRawFd, path::Path};

/// `SO_NETNS_COOKIE` (Linux 5.14), spelled out: not every libc build of
/// ours exports it, and its value is the same on every architecture we run.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the namespace `path` names (`/proc/PID/ns/net`,
/// `/run/netns/NAME`): read by a thread that enters it, so this process
/// stays where it is.
pub fn cookie(path: &Path) -> io::Result<u64> {
    let ns = File::open(path)?;
    std::thread::scope(|s| s.spawn(|| cookie_inside(&ns)).join())
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

fn cookie_inside(ns: &File) -> io::Result<u64> {
    // SAFETY: setns on a descriptor we own; it moves this thread only,
    // which ends right after.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_own_namespace_has_a_cookie() {
        // Needs Linux 5.14; older kernels answer ENOPROTOOPT.
        match super::cookie(std::path::Path::new("/proc/self/ns/net")) {
            Ok(c) => assert!(c > 0),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT)),
        }
    }
}
