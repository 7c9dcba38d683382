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
    /// arm64 with 16 KiB pages (the Raspberry Pi 5's kernel); trixie on.
    #[value(name = "arm64-16k")]
    Arm64_16k,
}

impl Arch {
    pub fn flavour(self) -> kernel::Flavour {
        match self {
            Arch::Amd64 => kernel::Flavour::Amd64,
            Arch::Arm64 => kernel::Flavour::Arm64,
            Arch::Arm64_16k => kernel::Flavour::Arm64_16k,
        }
    }

    pub fn is_arm64(self) -> bool {
        self != Arch::Amd64
    }
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
    ensure(&[(args.kernel, Arch::Amd64)])?;
    let k = kernel::ensure(CACHE.as_ref(), args.kernel, kernel::Flavour::Amd64)?;
    let cwd = std::env::current_dir()?;
    let script = guest::script(&cwd, &[], &args.command.join(" "));
    let line = guest::script_file(&format!("vm-{}", args.kernel), &script)?;
    let vm = guest::amd64_vm(&k, Duration::from_secs(args.timeout));
    Ok(boot::run(&vm, &line)?.status)
}

/// What `setup --kernel` adds: the VM tools and the kernels `kernels` name
/// (with an arm64 root filesystem and the aarch64 Rust target for arm64).
pub fn ensure(kernels: &[(Suite, Arch)]) -> Result<()> {
    let arm64 = kernels.iter().any(|(_, a)| a.is_arm64());
    host_tools::ensure(arm64)?;
    for &(s, arch) in kernels {
        let k = kernel::ensure(CACHE.as_ref(), s, arch.flavour())?;
        let name = arch.flavour().name();
        if arch.is_arm64() {
            let root = arm64::ensure_root(s, &k)?;
            println!("kernel {s} {name}: {} (root {})", k.version, root.display());
        } else {
            println!("kernel {s} {name}: {} ({})", k.version, k.dir.display());
        }
    }
    if arm64 {
        arm64::ensure_target(&crate::workspace::root())?;
    }
    Ok(())
}
