//! Other kernels in VMs: Debian's kernels booted with virtme-ng under QEMU's
//! software CPU (TCG), the host's root filesystem read-only, no network
//! device. `cargo xtask vm` runs one command in one; `cargo xtask test
//! --kernel` runs test tiers in each (see [`tiers`]).

pub mod arm64;
pub mod boot;
pub mod guest;
pub mod host_tools;
pub mod kernel;
pub mod matrix;
pub mod suite_apt;
pub mod tiers;

use std::time::Duration;

use anyhow::{bail, Result};

use crate::procs;
pub use kernel::Suite;
pub use tiers::Tier;

/// The architecture of the kernels a test run boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

/// Kernels, apt lists and VM scratch files. Not under /var/cache or /tmp:
/// virtme-ng mounts tmpfs over those in the guest, and the guest must see
/// the kernel's modules and our files.
pub const CACHE: &str = "/var/lib/bpfproxy-kvm";

/// `cargo xtask vm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Debian suite whose kernel boots.
    #[arg(long, value_enum)]
    kernel: Suite,
    /// Hard limit for the VM, boot included (seconds).
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// The command to run in the guest (a shell line; as root, in the
    /// current directory, RLIMIT_MEMLOCK raised).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Boots the kernel and returns the command's exit status.
pub fn run(args: &Args) -> Result<i32> {
    if !procs::is_root() {
        bail!("booting VMs needs root (virtme-ng shares the host's root filesystem)");
    }
    ensure(&[args.kernel], false)?;
    let k = kernel::ensure(CACHE.as_ref(), args.kernel, kernel::Flavour::Amd64)?;
    let cwd = std::env::current_dir()?;
    let script = guest::script(&cwd, &[], &args.command.join(" "));
    let line = guest::script_file(&format!("vm-{}", args.kernel), &script)?;
    let vm = guest::amd64_vm(&k, Duration::from_secs(args.timeout));
    Ok(boot::run(&vm, &line)?.status)
}

/// What `setup --vm` adds: the VM tools and the kernels of `suites`.
pub fn ensure(suites: &[Suite], arm64: bool) -> Result<()> {
    host_tools::ensure(arm64)?;
    for s in suites {
        let k = kernel::ensure(CACHE.as_ref(), *s, kernel::Flavour::Amd64)?;
        println!("kernel {s}: {} ({})", k.version, k.dir.display());
        if arm64 {
            let k = kernel::ensure(CACHE.as_ref(), *s, kernel::Flavour::Arm64)?;
            let root = arm64::ensure_root(*s, &k)?;
            println!("kernel {s} arm64: {} (root {})", k.version, root.display());
        }
    }
    if arm64 {
        arm64::ensure_target(&crate::workspace::root())?;
    }
    Ok(())
}
