//! `cargo xtask test`: the project's whole check, as CI runs it.
//!
//! setup, rustfmt, clippy (host crates and the eBPF crate), build, sweep of
//! test leftovers, nextest, and the sweep again even when tests failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::vm::{self, matrix::VmPlan};
use crate::{procs, setup, sh, sweep, workspace};

pub struct Options {
    /// Run only the tests that need no root.
    pub unprivileged: bool,
    /// The host's own check: fmt, clippy, build, the tests on this kernel.
    pub host: bool,
    /// Then test tiers in VMs with other kernels, one VM at a time.
    pub matrix: Vec<VmPlan>,
}

/// The eBPF crate: built for bpfel-unknown-none with nightly only.
const EBPF_CRATE: &str = "proxy-ebpf";
const EBPF_TARGET: &str = "bpfel-unknown-none";

pub fn run(opts: &Options) -> Result<()> {
    if !opts.unprivileged && !procs::is_root() {
        bail!(
            "the privileged test tiers (BPF programs, network namespaces, cgroups) \
             need root: run `cargo xtask test` as root, or `cargo xtask test \
             --unprivileged` for the tests that need no root"
        );
    }
    let root = workspace::root();
    // Per architecture one build or listing step and a VM per kernel.
    let per_arch = |arm64: bool| {
        let vms = opts.matrix.iter().filter(|p| p.arch.is_arm64() == arm64);
        let n = vms.count();
        if n > 0 {
            n + 1
        } else {
            0
        }
    };
    // The arm64 image is a step of its own when an arm64 VM runs its tier.
    let arm64_image = opts
        .matrix
        .iter()
        .any(|p| p.arch.is_arm64() && p.tiers.contains(&vm::Tier::Image));
    let vm_steps = per_arch(false) + per_arch(true) + usize::from(arm64_image);
    let host_steps = match (opts.host, opts.unprivileged) {
        (false, _) => 2, // setup, build
        (true, true) => 6,
        (true, false) => 10,
    };
    let mut steps = Steps::new(host_steps + vm_steps);
    let result = pipeline(opts, &root, &mut steps);
    steps.summary();
    result
}

fn pipeline(opts: &Options, root: &Path, steps: &mut Steps) -> Result<()> {
    let kernels: Vec<_> = opts.matrix.iter().map(|p| (p.suite, p.arch)).collect();
    let setup_name = if kernels.is_empty() {
        "setup"
    } else {
        "setup (with VMs and kernels)"
    };
    steps.step(setup_name, || {
        setup::run(&setup::Options {
            apt: !opts.unprivileged,
            kernels: kernels.clone(),
        })
    })?;
    let target = workspace::target_dir()?;
    if !opts.host {
        let agent = build(root, &target, steps)?;
        return kernel_matrix(opts, root, &agent, steps);
    }
    let host = host_checks(opts, root, &target, steps);
    if opts.matrix.is_empty() {
        return host;
    }
    // The VMs run after failed host tests too: the matrix's own report is
    // worth having. Not after a failed build.
    let agent = target.join("debug").join("bpfproxy");
    if !agent.is_file() {
        return host;
    }
    let vms = kernel_matrix(opts, root, &agent, steps);
    host.and(vms)
}

/// fmt, clippy, build, image, API server and the tests on this kernel.
fn host_checks(opts: &Options, root: &Path, target: &Path, steps: &mut Steps) -> Result<()> {
    steps.step("rustfmt", || {
        sh::run(&mut cargo(root, ["fmt", "--all", "--check"]))
            .context("rustfmt check failed (`cargo fmt --all` formats the code)")
    })?;
    steps.step("clippy (host crates)", || {
        sh::run(&mut cargo(
            root,
            [
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ))
    })?;
    steps.step("clippy (eBPF crate, nightly)", || ebpf_clippy(root, target))?;
    let agent = build(root, target, steps)?;

    if opts.unprivileged {
        return steps.step("tests (unprivileged)", || {
            let mut c = cargo(
                root,
                [
                    "nextest",
                    "run",
                    "--no-fail-fast",
                    "-p",
                    "proxy-common",
                    "-p",
                    "proxy-agent",
                    "-p",
                    "xtask",
                ],
            );
            sh::run(c.env("BPFPROXY_BIN", &agent))
        });
    }

    // The container tests run the image of this build's agent.
    steps.step("container image (debug agent)", || {
        crate::image::build(&agent)?;
        let tag = crate::image::tag();
        let dest = crate::image::host_export_dir()?;
        crate::image::export_root(&tag, crate::image::ImageArch::Amd64, &dest)
    })?;
    // Built here, not inside the first test that needs it: a cold build
    // takes minutes, longer than a test may run.
    steps.step("test API server (etcd + k8s.io/apiserver, cached)", || {
        sh::run(Command::new("bash").arg(root.join("tests/apiserver/build.sh")))
    })?;
    steps.step("sweep leftovers", sweep::sweep)?;
    let tests = steps.step("tests", || {
        let mut c = cargo(
            root,
            [
                "nextest",
                "run",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--no-fail-fast",
            ],
        );
        c.env("BPFPROXY_BIN", &agent)
            .env("BPFPROXY_IMAGE_ROOT", crate::image::host_export_dir()?);
        sh::run(&mut c)
    });
    // Always, also after failed tests.
    let swept = steps.step("sweep leftovers", sweep::sweep);
    tests?;
    swept
}

/// The normal debug build of binaries and tests; returns the agent binary.
fn build(root: &Path, target: &Path, steps: &mut Steps) -> Result<PathBuf> {
    steps.step("build", || {
        sh::run(&mut cargo(
            root,
            [
                "build",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--bins",
                "--tests",
            ],
        ))
    })?;
    let agent = target.join("debug").join("bpfproxy");
    if !agent.is_file() {
        bail!("the build made no agent binary at {}", agent.display());
    }
    Ok(agent)
}

/// The tiers in a VM per kernel; every kernel runs even when an earlier one
/// failed.
fn kernel_matrix(opts: &Options, root: &Path, agent: &Path, steps: &mut Steps) -> Result<()> {
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    let amd64: Vec<&VmPlan> = opts.matrix.iter().filter(|p| !p.arch.is_arm64()).collect();
    let arm64: Vec<&VmPlan> = opts.matrix.iter().filter(|p| p.arch.is_arm64()).collect();
    if !amd64.is_empty() {
        failed.extend(amd64_tiers(&amd64, root, agent, steps, &mut runs)?);
    }
    if !arm64.is_empty() {
        failed.extend(arm64_tiers(&arm64, root, steps, &mut runs)?);
    }
    println!("\n{}", vm::matrix::report(&runs));
    if !failed.is_empty() {
        bail!("tiers failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// The tiers on each plan's amd64 kernel; returns the kernels that failed.
fn amd64_tiers(
    plans: &[&VmPlan],
    root: &Path,
    agent: &Path,
    steps: &mut Steps,
    runs: &mut Vec<vm::matrix::KernelRun>,
) -> Result<Vec<String>> {
    let mut bins = None;
    let tiers = union_of_tiers(plans);
    steps.step("list the test binaries for the guests", || {
        let cargo_test = cargo(root, ["test"]);
        bins = Some(vm::matrix::TestBinaries::list(root, &tiers, cargo_test)?);
        Ok(())
    })?;
    let bins = bins.context("no test binaries")?;
    let mut failed = Vec::new();
    for p in plans {
        let btf = if p.hide_btf {
            ", kernel BTF hidden"
        } else {
            ""
        };
        let name = format!("kernel {}: {} in a VM{btf}", p.suite, tier_names(&p.tiers));
        if !vm_step(steps, &name, runs, || {
            vm::matrix::run_kernel(root, agent, &bins, p)
        }) {
            failed.push(p.suite.to_string());
        }
    }
    Ok(failed)
}

/// The cross build, then the tiers on each plan's arm64 kernel; returns the
/// kernels that failed.
fn arm64_tiers(
    plans: &[&VmPlan],
    root: &Path,
    steps: &mut Steps,
    runs: &mut Vec<vm::matrix::KernelRun>,
) -> Result<Vec<String>> {
    let mut bins = None;
    let tiers = union_of_tiers(plans);
    steps.step("cross build for aarch64", || {
        bins = Some(vm::arm64::build(root, &tiers)?);
        Ok(())
    })?;
    let bins = bins.context("no aarch64 test binary")?;
    if tiers.contains(&vm::Tier::Image) {
        steps.step("arm64 image (debug agent), its root exported", || {
            let dir = vm::arm64::project_dir(&bins)?;
            crate::image::arm64_debug_image(&dir.join("bpfproxy"), &dir.join("image-root"))
        })?;
    }
    let mut failed = Vec::new();
    for p in plans {
        let flavour = p.arch.flavour();
        let kernel = format!("{} {}", p.suite, flavour.name());
        let name = format!("kernel {kernel}: {} in a VM", tier_names(&p.tiers));
        if !vm_step(steps, &name, runs, || {
            vm::arm64::run_tiers(p.suite, flavour, &bins, &p.tiers)
        }) {
            failed.push(kernel);
        }
    }
    Ok(failed)
}

fn union_of_tiers(plans: &[&VmPlan]) -> Vec<vm::Tier> {
    vm::matrix::tiers_of(plans.iter().copied())
}

fn tier_names(tiers: &[vm::Tier]) -> String {
    let names: Vec<&str> = tiers.iter().map(|t| t.name()).collect();
    names.join(", ")
}

/// One VM as a step; its run is kept for the report. Whether it passed.
fn vm_step(
    steps: &mut Steps,
    name: &str,
    runs: &mut Vec<vm::matrix::KernelRun>,
    boot: impl FnOnce() -> Result<vm::matrix::KernelRun>,
) -> bool {
    let r = steps.step(name, || {
        let run = boot()?;
        let status = run.status;
        runs.push(run);
        if status != 0 {
            bail!("the VM exited with status {status}");
        }
        Ok(())
    });
    r.is_ok()
}

/// Clippy of the eBPF crate for its real target, in its own target directory
/// so it neither waits for nor invalidates the agent's embedded eBPF build.
fn ebpf_clippy(root: &Path, target: &Path) -> Result<()> {
    let target_dir: PathBuf = target.join("ebpf-clippy");
    let mut c = sh::cmd("rustup", ["run", "nightly", "cargo", "clippy", "--release"]);
    c.args([
        "--target",
        EBPF_TARGET,
        "-Z",
        "build-std=core",
        "--target-dir",
    ])
    .arg(&target_dir)
    .args(["--", "-D", "warnings"])
    .current_dir(root.join(EBPF_CRATE));
    sh::run(&mut c)
}

/// `cargo ARGS` in the workspace root (so rust-toolchain.toml applies).
fn cargo<const N: usize>(root: &Path, args: [&str; N]) -> Command {
    let mut c = sh::cmd("cargo", args);
    c.current_dir(root);
    c
}

/// Announces numbered steps and keeps their timings for a summary.
struct Steps {
    total: usize,
    done: Vec<(String, Duration, bool)>,
}

impl Steps {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: Vec::new(),
        }
    }

    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let n = self.done.len() + 1;
        println!("\n==> [{n}/{}] {name}", self.total);
        let start = Instant::now();
        let r = f();
        let took = start.elapsed();
        match &r {
            Ok(()) => println!("==> {name}: ok ({took:.1?})"),
            Err(e) => println!("==> {name}: FAILED ({took:.1?}): {e:#}"),
        }
        self.done.push((name.to_string(), took, r.is_ok()));
        r.with_context(|| format!("step `{name}` failed"))
    }

    fn summary(&self) {
        println!("\n==> summary");
        for (name, took, ok) in &self.done {
            let mark = if *ok { "ok    " } else { "FAILED" };
            println!("    {mark} {took:>8.1?}  {name}");
        }
        let skipped = self.total.saturating_sub(self.done.len());
        if skipped > 0 {
            println!("    ({skipped} later steps not run)");
        }
        // A full disk fails builds with causes far up the log.
        if let Some(free) = sh::probe(&mut sh::cmd("df", ["-h", "--output=avail", "."])) {
            let free = free.lines().last().unwrap_or("?").trim().to_string();
            println!("    free disk where the build writes: {free}");
        }
    }
}
