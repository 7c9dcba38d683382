//! `cargo xtask`: what cargo cannot do alone.

mod apt;
mod bench;
mod bpf_linker;
mod demo;
mod image;
mod procs;
mod setup;
mod sh;
mod sweep;
mod test;
mod vm;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "bpfproxy's project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent; as root on a
    /// fresh machine).
    Setup(setup::Args),
    /// The project's full check, as CI runs it: setup, fmt, clippy, build,
    /// all tests on this kernel (root), with leftovers swept before and
    /// after; then the kernel matrix: test tiers in VMs on Debian's kernels
    /// (5.10 to the newest, amd64 and arm64).
    Test {
        /// Run only the tests that need no root (no setup of Debian
        /// packages, no VMs).
        #[arg(long)]
        unprivileged: bool,
        /// Only this kernel's tests, not the kernel matrix's VMs.
        #[arg(long, conflicts_with = "kernel")]
        host_only: bool,
        /// Only the default kernel matrix's VMs (after setup and the build).
        #[arg(long, conflicts_with_all = ["kernel", "host_only"])]
        vms_only: bool,
        /// Instead of the host's tests and the default matrix: boot these
        /// Debian suites' kernels in VMs, one after another, and run
        /// `--tier` in each (after setup and the build).
        #[arg(long, value_enum, value_delimiter = ',')]
        kernel: Vec<vm::Suite>,
        /// The tiers run in each VM of `--kernel` (default: all).
        #[arg(long, value_enum, value_delimiter = ',', requires = "kernel")]
        tier: Vec<vm::Tier>,
        /// The architectures of `--kernel`'s kernels: amd64 runs on the
        /// host's build; arm64 (and arm64-16k, 16 KiB pages) cross-build for
        /// aarch64 and boot under qemu-system-aarch64.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "amd64",
            requires = "kernel"
        )]
        arch: Vec<vm::Arch>,
    },
    /// Remove leftovers of privileged tests (bpfpt-* namespaces, cgroups,
    /// bpffs mounts, agents).
    Sweep,
    /// Run the demo.
    Demo(demo::Args),
    /// Boot a Debian kernel in a VM (QEMU, software CPU, the host's root
    /// read-only, no network device) and run a command in it; exits with
    /// the command's status.
    Vm(vm::Args),
    /// Run the benchmarks (release build; root for the kernel ones) and
    /// write their reports to target/bench/.
    Bench(bench::Args),
    /// Build the container image `bpfproxy:<version>` from scratch (the
    /// release binary and its libraries; root, buildah) and its OCI archive
    /// in target/image/.
    Image(image::Args),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain, not a backtrace: these errors name commands and files.
            eprintln!("\nerror: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    workspace::ensure_cargo_bin_on_path()?;
    match cli.command {
        Task::Setup(args) => setup::run(&args.options()),
        Task::Test {
            unprivileged,
            host_only,
            vms_only,
            kernel,
            tier,
            arch,
        } => {
            let tiers = if tier.is_empty() {
                vm::Tier::ALL.to_vec()
            } else {
                tier
            };
            let matrix = if !kernel.is_empty() {
                kernel
                    .iter()
                    .flat_map(|s| arch.iter().map(|a| vm::matrix::VmPlan::new(*s, *a, &tiers)))
                    .collect()
            } else if unprivileged || host_only {
                Vec::new()
            } else {
                vm::matrix::default_matrix()
            };
            test::run(&test::Options {
                unprivileged,
                host: kernel.is_empty() && !vms_only,
                matrix,
            })
        }
        Task::Sweep => {
            if !procs::is_root() {
                anyhow::bail!("sweeping namespaces, cgroups and mounts needs root");
            }
            sweep::sweep()
        }
        Task::Demo(args) => demo::run(args),
        Task::Vm(args) => {
            let status = vm::run(&args)?;
            if status != 0 {
                // The guest command's status, as `vng` and `timeout` report it.
                std::process::exit(status);
            }
            Ok(())
        }
        Task::Bench(args) => bench::run(&args),
        Task::Image(args) => image::run(&args),
    }
}
