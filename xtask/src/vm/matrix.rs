//! `cargo xtask test --kernel`: the host-built test binaries, run by tier
//! in a VM per kernel, one VM at a time (two TCG guests on two cores would
//! only slow each other down).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::kernel::{self, Flavour, Suite};
use super::tiers::{self, Tier, TierResult};
use super::{boot, guest, Arch, CACHE};
use crate::sh;

/// One VM of a test run: a kernel and the tiers run in it.
#[derive(Clone, Debug, PartialEq)]
pub struct VmPlan {
    pub suite: Suite,
    pub arch: Arch,
    pub tiers: Vec<Tier>,
    /// Hide the kernel's BTF (`/sys/kernel/btf`) from everything in the
    /// guest, as on kernels built without `CONFIG_DEBUG_INFO_BTF`.
    pub hide_btf: bool,
}

impl VmPlan {
    pub fn new(suite: Suite, arch: Arch, tiers: &[Tier]) -> Self {
        Self {
            suite,
            arch,
            tiers: tiers.to_vec(),
            hide_btf: false,
        }
    }

    fn without_btf(mut self) -> Self {
        self.hide_btf = true;
        self
    }
}

/// The guest's commands before the tiers when the kernel's BTF is hidden:
/// a tmpfs over /sys/kernel/btf, checked.
const HIDE_BTF: &str = "mount -t tmpfs none /sys/kernel/btf && test ! -e /sys/kernel/btf/vmlinux \
     && echo 'kernel BTF hidden' || exit 3; ";

/// The matrix `cargo xtask test` (and so CI) runs after the host's tests,
/// sized for CI's 2 cores and 90 minutes (TCG makes every tier minutes
/// long). The floor kernel (5.10: no `bpf_set_retval`, no TCX, the
/// two-argument `bpf_redirect_neigh`, IPIP devices that show their outer
/// headers) runs every tier, the NodePort one (real IPIP and WireGuard, an
/// agent restart with pins) only there; 6.1 is the clsact path with
/// `bpf_set_retval`, its kernel BTF hidden (the agent must not need it);
/// 6.12 is what most boards and distributions ship; the newest kernel has
/// TCX. arm64: the program tier, socket LB and the arm64 image's own root
/// on 6.12, with 4 KiB and with 16 KiB pages (Raspberry Pi 5). bullseye's
/// arm64 kernel is not on the mirror.
pub fn default_matrix() -> Vec<VmPlan> {
    use Tier::*;
    vec![
        VmPlan::new(Suite::Bullseye, Arch::Amd64, &Tier::ALL),
        VmPlan::new(Suite::Bookworm, Arch::Amd64, &[Attach, SocketLb]).without_btf(),
        VmPlan::new(Suite::Trixie, Arch::Amd64, &[Prog, Attach]),
        VmPlan::new(Suite::Sid, Arch::Amd64, &[Prog, Attach, SocketLb]),
        VmPlan::new(Suite::Trixie, Arch::Arm64, &[Prog, SocketLb, Image]),
        VmPlan::new(Suite::Trixie, Arch::Arm64_16k, &[Prog, SocketLb, Image]),
    ]
}

/// Every tier of `plans`, each once (what to build or list for them).
pub fn tiers_of<'a>(plans: impl IntoIterator<Item = &'a VmPlan>) -> Vec<Tier> {
    let mut all: Vec<Tier> = Vec::new();
    for t in plans.into_iter().flat_map(|p| &p.tiers) {
        if !all.contains(t) {
            all.push(*t);
        }
    }
    all
}

/// One kernel's run.
pub struct KernelRun {
    pub suite: Suite,
    pub arch: &'static str,
    /// How the guest differs from a plain boot ("kernel BTF hidden").
    pub note: &'static str,
    pub version: String,
    /// The VM's exit status (0: every tier passed).
    pub status: i32,
    pub wall: Duration,
    pub tiers: Vec<TierResult>,
}

/// The host-built test binary of each tier.
pub struct TestBinaries(Vec<(Tier, PathBuf)>);

impl TestBinaries {
    /// Asks cargo for the tiers' test executables (no rebuild: the build
    /// step ran). `cross` adds cargo's arguments and environment for
    /// another target.
    pub fn list(root: &Path, tiers: &[Tier], mut c: Command) -> Result<Self> {
        c.args([
            "--no-run",
            "--message-format",
            "json",
            "-p",
            "bpfproxy-tests",
        ]);
        for t in tiers {
            c.args(["--test", t.target()]);
        }
        let out = sh::read(c.current_dir(root))?;
        let bins = tiers
            .iter()
            .map(|t| {
                let exe = test_executable(&out, t.target())
                    .with_context(|| format!("cargo named no {} test executable", t.target()))?;
                Ok((*t, exe))
            })
            .collect::<Result<_>>()?;
        Ok(Self(bins))
    }

    /// The guest's commands for `tiers`; `at` maps a host path to the
    /// guest's.
    pub fn commands(&self, tiers: &[Tier], at: impl Fn(&Path) -> String) -> String {
        let runs: Vec<(&str, String)> = self
            .0
            .iter()
            .filter(|(t, _)| tiers.contains(t))
            .map(|(t, exe)| (t.name(), format!("{} {}", at(exe), t.args())))
            .collect();
        tiers::commands(&runs)
    }

    /// The directory cargo put the binaries in (`…/debug/deps`).
    pub fn dir(&self) -> Option<&Path> {
        self.0.first().and_then(|(_, exe)| exe.parent())
    }
}

/// The executable of test target `name` in `cargo --message-format json`
/// output.
pub fn test_executable(json_lines: &str, name: &str) -> Option<PathBuf> {
    json_lines.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let target = v.get("target")?;
        let is_test = target.get("kind")?.as_array()?.iter().any(|k| k == "test");
        if !is_test || target.get("name")? != name {
            return None;
        }
        v.get("executable")?.as_str().map(PathBuf::from)
    })
}

/// Boots `plan`'s amd64 kernel and runs its tiers in it.
pub fn run_kernel(
    root: &Path,
    agent: &Path,
    bins: &TestBinaries,
    plan: &VmPlan,
) -> Result<KernelRun> {
    let (suite, tiers) = (plan.suite, plan.tiers.as_slice());
    let k = kernel::ensure(CACHE.as_ref(), suite, Flavour::Amd64)?;
    let image_root = crate::image::host_export_dir()?;
    let env = [
        ("BPFPROXY_BIN", agent.display().to_string()),
        ("BPFPROXY_IMAGE_ROOT", image_root.display().to_string()),
    ];
    // The guest sees the host's paths as they are.
    let mut commands = bins.commands(tiers, |p| p.display().to_string());
    if plan.hide_btf {
        commands.insert_str(0, HIDE_BTF);
    }
    let script = guest::script(root, &env, &commands);
    let line = guest::script_file(&format!("tiers-{suite}"), &script)?;
    // Boot ~30 s, and a tier takes minutes under TCG (no per-test timeout
    // with libtest): a generous bound that still ends a hung guest well
    // within CI's budget.
    let timeout = Duration::from_secs(300 + 900 * tiers.len() as u64);
    let out = boot::run(&guest::amd64_vm(&k, timeout), &line)?;
    Ok(KernelRun {
        suite,
        arch: Flavour::Amd64.name(),
        note: if plan.hide_btf {
            " (kernel BTF hidden)"
        } else {
            ""
        },
        version: k.version,
        status: out.status,
        wall: out.wall,
        tiers: tiers::results(&out.stdout),
    })
}

/// The per-kernel table printed at the end.
pub fn report(runs: &[KernelRun]) -> String {
    let mut s = String::from("kernel matrix (tests run / passed / failed, time in the guest):\n");
    for r in runs {
        let tiers_time: Duration = r.tiers.iter().filter_map(|t| t.wall).sum();
        s += &format!(
            "  {} {} {}{}: vm status {} in {:.0?} (boot and shutdown ~{:.0?})\n",
            r.suite,
            r.arch,
            r.version,
            r.note,
            r.status,
            r.wall,
            r.wall.saturating_sub(tiers_time)
        );
        for t in &r.tiers {
            let wall = t.wall.map_or("?".to_string(), |w| format!("{w:.1?}"));
            s += &format!(
                "      {:<10} {:>3} run {:>3} passed {:>3} failed  {wall}\n",
                t.tier, t.run, t.passed, t.failed
            );
            for f in &t.failures {
                s += &format!("          FAILED {f}\n");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_executable_comes_from_cargos_messages() {
        let out = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"tc_prog"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"tc_prog"},"executable":"/t/deps/tc_prog-ab12"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executable(out, "tc_prog"),
            Some(PathBuf::from("/t/deps/tc_prog-ab12"))
        );
        assert_eq!(test_executable(out, "socket_lb"), None);
    }
}
