//! `cargo xtask test`: the project's whole check, as CI runs it.
//!
//! setup, rustfmt, clippy (host crates and the eBPF crate), build, sweep of
//! test leftovers, nextest, and the sweep again even when tests failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::vm::{self, Suite, Tier};
use crate::{procs, setup, sh, sweep, workspace};

pub struct Options {
    /// Run only the tests that need no root.
    pub unprivileged: bool,
    /// Run test tiers in VMs with these kernels instead of the host's tests.
    pub kernels: Vec<Suite>,
    /// The tiers run in each VM.
    pub tiers: Vec<Tier>,
    /// The tiers on the suites' amd64 kernels.
    pub amd64: bool,
    /// The program tier on the suites' arm64 kernels.
    pub arm64: bool,
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
    if !opts.kernels.is_empty() {
        // setup and build, then per architecture one build or listing
        // step and a VM per kernel
        let per_arch = |on: bool| if on { 1 + opts.kernels.len() } else { 0 };
        let mut steps = Steps::new(2 + per_arch(opts.amd64) + per_arch(opts.arm64));
        let result = kernel_pipeline(opts, &root, &mut steps);
        steps.summary();
        return result;
    }
    let mut steps = Steps::new(if opts.unprivileged { 6 } else { 10 });
    let result = pipeline(opts, &root, &mut steps);
    steps.summary();
    result
}

fn pipeline(opts: &Options, root: &Path, steps: &mut Steps) -> Result<()> {
    steps.step("setup", || {
        setup::run(&setup::Options {
            apt: !opts.unprivileged,
            ..Default::default()
        })
    })?;
    let target = workspace::target_dir()?;
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
    steps.step("clippy (eBPF crate, nightly)", || {
        ebpf_clippy(root, &target)
    })?;
    let agent = build(root, &target, steps)?;

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
        crate::image::build(&agent)
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
        sh::run(c.env("BPFPROXY_BIN", &agent))
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

/// `--kernel`: setup with the VM pieces, the build, then the tiers in a VM
/// per kernel; every kernel runs even when an earlier one failed.
fn kernel_pipeline(opts: &Options, root: &Path, steps: &mut Steps) -> Result<()> {
    steps.step("setup (with VMs and kernels)", || {
        setup::run(&setup::Options {
            apt: true,
            kernels: opts.kernels.clone(),
            arm64: opts.arm64,
        })
    })?;
    let target = workspace::target_dir()?;
    let agent = build(root, &target, steps)?;
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    if opts.amd64 {
        failed.extend(amd64_tiers(opts, root, &agent, steps, &mut runs)?);
    }
    if opts.arm64 {
        failed.extend(arm64_tiers(opts, root, steps, &mut runs)?);
    }
    println!("\n{}", vm::matrix::report(&runs));
    if !failed.is_empty() {
        bail!("tiers failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// The tiers on each suite's amd64 kernel; returns the suites that failed.
fn amd64_tiers(
    opts: &Options,
    root: &Path,
    agent: &Path,
    steps: &mut Steps,
    runs: &mut Vec<vm::matrix::KernelRun>,
) -> Result<Vec<String>> {
    let mut bins = None;
    steps.step("list the test binaries for the guests", || {
        let cargo_test = cargo(root, ["test"]);
        bins = Some(vm::matrix::TestBinaries::list(
            root,
            &opts.tiers,
            cargo_test,
        )?);
        Ok(())
    })?;
    let bins = bins.context("no test binaries")?;
    let mut failed = Vec::new();
    for &suite in &opts.kernels {
        let name = format!("kernel {suite}: tiers in a VM");
        if !vm_step(steps, &name, runs, || {
            vm::matrix::run_kernel(root, agent, &bins, suite)
        }) {
            failed.push(suite.to_string());
        }
    }
    Ok(failed)
}

/// The cross build, then the program tier on each suite's arm64 kernel;
/// returns the suites that failed.
fn arm64_tiers(
    opts: &Options,
    root: &Path,
    steps: &mut Steps,
    runs: &mut Vec<vm::matrix::KernelRun>,
) -> Result<Vec<String>> {
    let mut bins = None;
    steps.step("cross build for aarch64", || {
        bins = Some(vm::arm64::build(root)?);
        Ok(())
    })?;
    let bins = bins.context("no aarch64 test binary")?;
    let mut failed = Vec::new();
    for &suite in &opts.kernels {
        let name = format!("kernel {suite} arm64: prog tier in a VM");
        if !vm_step(steps, &name, runs, || {
            vm::arm64::run_prog_tier(suite, &bins)
        }) {
            failed.push(format!("{suite} arm64"));
        }
    }
    Ok(failed)
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
    }
}
