//! `cargo xtask test --kernel`: the host-built test binaries, run by tier
//! in a VM per kernel, one VM at a time (two TCG guests on two cores would
//! only slow each other down).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::kernel::{self, Flavour, Suite};
use super::tiers::{self, Tier, TierResult};
use super::{boot, guest, CACHE};
use crate::sh;

/// The nextest configuration in the guest: as the repository's, with
/// longer timeouts, because under TCG CPU work is ~8x and namespace
/// creation ~35x slower.
const NEXTEST_TOML: &str = r#"# written by `cargo xtask test --kernel`
[profile.default]
test-threads = 2
slow-timeout = { period = "120s", terminate-after = 5 }
failure-output = "final"
fail-fast = false
"#;

/// One kernel's run.
pub struct KernelRun {
    pub suite: Suite,
    pub arch: &'static str,
    pub version: String,
    /// The VM's exit status (0: every tier passed).
    pub status: i32,
    pub wall: Duration,
    pub tiers: Vec<TierResult>,
}

/// Files the guest's nextest reads instead of building: the binary list
/// and cargo metadata, written on the host after the build.
pub struct Reuse {
    dir: PathBuf,
}

impl Reuse {
    /// Lists the built test binaries (no rebuild: the build step ran).
    pub fn write(root: &Path) -> Result<Self> {
        let dir = Path::new(CACHE).join("run");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut list = sh::cmd("cargo", ["nextest", "list", "--workspace", "--exclude"]);
        list.args(["proxy-ebpf", "--list-type", "binaries-only"])
            .args(["--message-format", "json"])
            .current_dir(root);
        std::fs::write(dir.join("binaries.json"), sh::read(&mut list)?)?;
        let mut meta = sh::cmd(
            "cargo",
            ["metadata", "--format-version", "1", "--all-features"],
        );
        meta.current_dir(root);
        std::fs::write(dir.join("cargo-metadata.json"), sh::read(&mut meta)?)?;
        std::fs::write(dir.join("nextest.toml"), NEXTEST_TOML)?;
        Ok(Self { dir })
    }

    /// The guest's nextest command, without a filter.
    fn nextest(&self, nextest_bin: &Path) -> String {
        let f = |n: &str| self.dir.join(n).display().to_string();
        format!(
            "{} nextest run --no-fail-fast --binaries-metadata {} --cargo-metadata {} --config-file {}",
            nextest_bin.display(),
            f("binaries.json"),
            f("cargo-metadata.json"),
            f("nextest.toml")
        )
    }
}

/// Boots `suite`'s kernel and runs `tiers` in it.
pub fn run_kernel(
    root: &Path,
    agent: &Path,
    reuse: &Reuse,
    suite: Suite,
    tiers: &[Tier],
) -> Result<KernelRun> {
    let k = kernel::ensure(CACHE.as_ref(), suite, Flavour::Amd64)?;
    let nextest = find_on_path("cargo-nextest").context("cargo-nextest is not on the PATH")?;
    let env = [("BPFPROXY_BIN", agent.display().to_string())];
    let script = guest::script(
        root,
        &env,
        &tiers::commands(&reuse.nextest(&nextest), tiers),
    );
    let line = guest::script_file(&format!("tiers-{suite}"), &script)?;
    // Boot ~30 s, and a tier takes minutes under TCG: a generous bound that
    // still ends a hung guest well within CI's budget.
    let timeout = Duration::from_secs(300 + 900 * tiers.len() as u64);
    let out = boot::run(&guest::amd64_vm(&k, timeout), &line)?;
    Ok(KernelRun {
        suite,
        arch: "amd64",
        version: k.version,
        status: out.status,
        wall: out.wall,
        tiers: tiers::results(&out.stdout),
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The per-kernel table printed at the end.
pub fn report(runs: &[KernelRun]) -> String {
    let mut s = String::from("kernel matrix (tests run / passed / failed, time in the guest):\n");
    for r in runs {
        let tiers_time: Duration = r.tiers.iter().filter_map(|t| t.wall).sum();
        s += &format!(
            "  {} {} {}: vm status {} in {:.0?} (boot and shutdown ~{:.0?})\n",
            r.suite,
            r.arch,
            r.version,
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
