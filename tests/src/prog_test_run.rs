//! BPF_PROG_TEST_RUN, which aya 0.14 does not wrap: runs a loaded program
//! once on a packet the test supplies and returns its verdict and the
//! packet as the program left it.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (kernel ≥ 5.10 layout).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);

/// What one run returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (for TC: TC_ACT_*).
    pub retval: u32,
    /// The packet after the program ran.
    pub data: Vec<u8>,
    /// The context after the run (empty when none was passed in).
    pub ctx: Vec<u8>,
}

/// Runs `prog` `repeat` times on `data` inside the kernel and returns the
/// mean time per run in nanoseconds, as the kernel measured it. The
/// program sees the packet as the previous run left it (the kernel does not
/// reset it between runs), so measure paths that do not rewrite.
pub fn mean_ns(prog: impl AsFd, data: &[u8], repeat: u32) -> io::Result<u32> {
    let mut out = vec![0u8; data.len() + OUT_HEADROOM];
    let mut attr = TestRunAttr::packet(prog.as_fd(), data, &mut out, repeat);
    syscall(&mut attr)?;
    Ok(attr.duration)
}

impl TestRunAttr {
    /// Runs `prog` `repeat` times on `data`, writing the result to `out`.
    /// The pointers stay valid as long as the borrowed buffers do, which
    /// callers keep alive across [`syscall`].
    fn packet(prog: BorrowedFd<'_>, data: &[u8], out: &mut [u8], repeat: u32) -> Self {
        TestRunAttr {
            prog_fd: prog.as_raw_fd() as u32,
            data_size_in: data.len() as u32,
            data_size_out: out.len() as u32,
            data_in: data.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..Default::default()
        }
    }
}

/// BPF_PROG_TEST_RUN with a prepared `attr`.
fn syscall(attr: &mut TestRunAttr) -> io::Result<()> {
    // SAFETY: callers fill `attr` completely, with buffer pointers and
    // sizes that stay valid for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestRunAttr as *mut libc::c_void,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Room for the output packet beyond the input (a program may grow it).
const OUT_HEADROOM: usize = 256;

/// Runs `prog` once on `data`, with an optional context (e.g. a
/// `__sk_buff` for TC programs) passed in and read back.
pub fn run(prog: impl AsFd, data: &[u8], ctx: Option<&[u8]>) -> io::Result<TestRun> {
    let mut out = vec![0u8; data.len() + OUT_HEADROOM];
    let mut ctx_out = vec![0u8; ctx.map_or(0, <[u8]>::len)];
    let mut attr = TestRunAttr::packet(prog.as_fd(), data, &mut out, 1);
    if let Some(ctx) = ctx {
        attr.ctx_size_in = ctx.len() as u32;
        attr.ctx_in = ctx.as_ptr() as u64;
        attr.ctx_size_out = ctx_out.len() as u32;
        attr.ctx_out = ctx_out.as_mut_ptr() as u64;
    }
    // SAFETY: attr is fully initialised; data_in/ctx_in point at buffers of
    // the sizes given and data_out/ctx_out at writable ones, all of which
    // outlive the call.
    syscall(&mut attr)?;
    out.truncate(attr.data_size_out as usize);
    ctx_out.truncate(attr.ctx_size_out as usize);
    Ok(TestRun {
        retval: attr.retval,
        data: out,
        ctx: ctx_out,
    })
}
