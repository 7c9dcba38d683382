//! arm64 without arm64 hardware: the agent and a test binary cross-built
//! for aarch64, a Debian arm64 root filesystem unpacked without emulation,
//! and Debian's arm64 kernel booted under qemu-system-aarch64 (TCG).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::boot::{self, Arm64, Vm};
use super::kernel::{self, Flavour, Kernel, Suite};
use super::matrix::TestBinaries;
use super::tiers::{self, Tier};
use super::{guest, suite_apt, CACHE};
use crate::sh;

pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// Where the cross-built binaries appear in the guest.
const PROJECT: &str = "/project";

/// What the guest root needs: a shell, mount, ip (the tests' namespaces and
/// veths), kill/pgrep, modprobe, busybox for virtme-ng's init, and curl
/// (the socket-LB tier's HTTP client).
const ROOT_PACKAGES: &str = "base-files,base-passwd,bash,dash,coreutils,util-linux,mount,grep,\
     sed,findutils,mawk,gzip,kmod,udev,procps,busybox-static,iproute2,curl";

/// The aarch64 Rust target of the pinned toolchain.
pub fn ensure_target(root: &Path) -> Result<()> {
    let mut list = sh::cmd("rustup", ["target", "list", "--installed"]);
    list.current_dir(root);
    if sh::read(&mut list)?.lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    let mut add = sh::cmd("rustup", ["target", "add", TARGET]);
    sh::run(add.current_dir(root))
}

/// Cross-builds the agent, the helper binaries and `tiers`' test binaries.
/// The eBPF object is the same for every architecture.
pub fn build(root: &Path, tiers: &[Tier]) -> Result<TestBinaries> {
    let mut c = cross_cargo(
        root,
        [
            "build",
            "-p",
            "proxy-agent",
            "-p",
            "bpfproxy-tests",
            "--bins",
        ],
    );
    sh::run(&mut c)?;
    TestBinaries::list(root, tiers, cross_cargo(root, ["test"]))
}

/// `cargo ARGS --target aarch64…` with the cross linker and C compiler
/// (ring compiles C).
pub fn cross_cargo<const N: usize>(root: &Path, args: [&str; N]) -> Command {
    let mut c = sh::cmd("cargo", args);
    c.args(["--target", TARGET])
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar")
        .current_dir(root);
    c
}

/// An arm64 Debian root of `suite` with `k`'s modules, made without
/// emulation: mmdebstrap only unpacks (no maintainer scripts), and the few
/// things those scripts would have done are done here.
pub fn ensure_root(suite: Suite, k: &Kernel) -> Result<PathBuf> {
    let out = Path::new(CACHE).join(format!("rootfs-{suite}-arm64"));
    // bookworm's unmerged root has /bin/ip, merged ones /usr/bin/ip.
    let has_ip = ["bin/ip", "usr/bin/ip"]
        .iter()
        .any(|p| out.join(p).exists());
    let has_curl = out.join("usr/bin/curl").exists();
    if !out.join("sbin/poweroff").exists() || !has_ip || !has_curl {
        let _ = std::fs::remove_dir_all(&out);
        let mirror = mirror()?;
        let mut c = sh::cmd(
            "mmdebstrap",
            ["--variant=extract", "--arch=arm64", "--mode=root"],
        );
        c.args(["--skip=check/empty", &format!("--include={ROOT_PACKAGES}")])
            .arg(suite.to_string())
            .arg(&out)
            .arg(format!("deb {mirror} {suite} main"));
        sh::run(&mut c)?;
    }
    // Cheap and idempotent: also repairs roots made by older versions.
    finish_root(&out).with_context(|| format!("finishing {}", out.display()))?;
    // Modules are loaded from the guest's root (/lib is usr/lib when the
    // root has merged /usr).
    let lib = if out.join("lib").is_symlink() {
        "usr/lib/modules"
    } else {
        "lib/modules"
    };
    let modules = out.join(lib).join(&k.version);
    if !modules.is_dir() {
        std::fs::create_dir_all(out.join(lib))?;
        sh::run(sh::cmd("cp", ["-a"]).arg(k.modules()).arg(&modules))?;
    }
    Ok(out)
}

fn mirror() -> Result<String> {
    let sites = sh::read(&mut sh::cmd(
        "apt-get",
        ["indextargets", "--format", "$(SITE)"],
    ))?;
    Ok(suite_apt::mirrors(&sites)
        .context("no Debian mirror in apt's lists")?
        .0)
}

/// What postinst scripts would have done, and mount points for the guest.
fn finish_root(out: &Path) -> Result<()> {
    let link = |target: &str, at: &str| -> Result<()> {
        let at = out.join(at);
        if at.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &at)
                .with_context(|| format!("linking {}", at.display()))?;
        }
        Ok(())
    };
    link("dash", "bin/sh")?;
    // base-files' postinst makes these links; `ip netns` uses /run/netns
    // and the tests /var/run/netns.
    for (at, target) in [("var/run", "/run"), ("var/lock", "/run/lock")] {
        let p = out.join(at);
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir(&p).with_context(|| format!("replacing {}", p.display()))?;
        }
        link(target, at)?;
    }
    // virtme-ng's init powers off with poweroff (there is no systemd here).
    for t in ["poweroff", "reboot", "halt"] {
        link("/bin/busybox", &format!("sbin/{t}"))?;
    }
    for f in ["passwd", "group"] {
        if !out.join("etc").join(f).exists() {
            std::fs::copy(
                out.join(format!("usr/share/base-passwd/{f}.master")),
                out.join("etc").join(f),
            )?;
        }
    }
    for d in ["srv", "opt", "mnt", "sys/fs/bpf", "project"] {
        std::fs::create_dir_all(out.join(d))?;
    }
    std::fs::write(out.join("etc/hostname"), "virtme-ng\n")?;
    Ok(())
}

/// `target/aarch64…/debug`, where the agent, the probe and the image's
/// exported root are: the guest's /project.
pub fn project_dir(bins: &TestBinaries) -> Result<PathBuf> {
    bins.dir()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("test binaries outside target/…/deps")
}

/// Boots `suite`'s arm64 kernel of `flavour` and runs `tiers`' cross-built
/// test binaries.
pub fn run_tiers(
    suite: Suite,
    flavour: Flavour,
    bins: &TestBinaries,
    tiers: &[Tier],
) -> Result<super::matrix::KernelRun> {
    let k = kernel::ensure(CACHE.as_ref(), suite, flavour)?;
    let root = ensure_root(suite, &k)?;
    let dir = project_dir(bins)?;
    let env = [
        ("BPFPROXY_BIN", format!("{PROJECT}/bpfproxy")),
        ("BPFPROXY_IMAGE_ROOT", format!("{PROJECT}/image-root")),
    ];
    let cmd = bins.commands(tiers, |exe| {
        let name = exe.file_name().unwrap_or_default().to_string_lossy();
        format!("{PROJECT}/deps/{name}")
    });
    let script = guest::script(Path::new(PROJECT), &env, &cmd);
    // The arm64 guest's root is its own: the script goes to the project
    // directory it sees.
    let dir = dir.as_path();
    let file = format!("bpfproxy-tiers-{suite}-{}.sh", flavour.name());
    let line = format!("sh {PROJECT}/{file}");
    std::fs::write(dir.join(&file), format!("{script}\n"))?;
    let vm = Vm {
        image: k.image(),
        memory: "2G".into(),
        cpus: 2,
        overlays: Vec::new(),
        append: None,
        arm64: Some(Arm64 {
            root,
            cpu: cpu(flavour).into(),
            rodirs: vec![format!("{PROJECT}={}", dir.display())],
        }),
        timeout: Duration::from_secs(300 + 900 * tiers.len() as u64),
    };
    let out = boot::run(&vm, &line)?;
    if out.status == boot::TIMED_OUT {
        bail!("the arm64 VM timed out");
    }
    Ok(super::matrix::KernelRun {
        suite,
        arch: flavour.name(),
        note: "",
        version: k.version,
        status: out.status,
        wall: out.wall,
        tiers: tiers::results(&out.stdout),
    })
}

/// The emulated CPU: `cortex-a72` is much faster under TCG than `max`, but
/// has no 16 KiB translation granule (`ID_AA64MMFR0.TGran16`); a 16k kernel
/// stops at boot without one. `cortex-a76` has it.
fn cpu(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Arm64_16k => "cortex-a76",
        _ => "cortex-a72",
    }
}
