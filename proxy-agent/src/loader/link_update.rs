//! BPF_LINK_UPDATE for cgroup links, which aya 0.14 lacks: swaps the
//! program inside a pinned link in one syscall, so there is no moment
//! without a program on the cgroup.
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use aya::programs::ProgramFd;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the
    // size we pass; the kernel zero-extends the rest.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Opens the link pinned at `pin`.
pub fn open_pinned(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object `fd` (a link or a map) at `pin`; the fd stays ours.
/// aya's `FdLink::pin` consumes the link, so a failed pin would drop, and
/// detach, the very link being saved.
pub fn pin_fd(fd: std::os::fd::BorrowedFd<'_>, pin: &Path) -> io::Result<()> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_PIN takes the same attribute layout as BPF_OBJ_GET.
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Detaches the link pinned at `pin` now and removes the pin. Removing the
/// pin alone detaches too, but later (the kernel frees an unpinned link
/// from a workqueue), so a caller could still see the program attached.
pub fn detach_pinned(pin: &Path) -> io::Result<()> {
    let link = open_pinned(pin)?;
    let mut detach = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    // A link already defunct (its device is gone) has nothing to detach.
    if let Err(e) = bpf(BPF_LINK_DETACH, &mut detach) {
        if !is_defunct(&e) {
            return Err(e);
        }
    }
    std::fs::remove_file(pin)
}

/// Replaces the program of the link pinned at `pin` with `prog`.
pub fn replace_program(pin: &Path, prog: &ProgramFd) -> io::Result<()> {
    let link = open_pinned(pin)?;
    let mut update = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut update).map(|_| ())
}

/// True when the pinned link can't be updated because it no longer is
/// attached (its cgroup was removed) or the pin is not a link.
pub fn is_defunct(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOLINK) | Some(libc::EINVAL) | Some(libc::ENOENT)
    )
}
