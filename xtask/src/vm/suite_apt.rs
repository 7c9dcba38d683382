//! apt against another Debian suite or architecture without touching the
//! system's apt setup: a private sources.list, lists, cache and (for
//! downloads) an empty dpkg status under [`super::CACHE`]`/apt/SUITE-ARCH`.
//!
//! The mirror is the machine's own (read from `apt-get indextargets`), never
//! a hard-coded host: CI machines only reach their configured mirror.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::sh;

/// Debian's archive keyring (package debian-archive-keyring, always present).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A private apt configuration for one suite and architecture.
pub struct SuiteApt {
    root: PathBuf,
    arch: String,
}

impl SuiteApt {
    /// Writes the configuration under `cache/apt/SUITE-ARCH` (cheap; lists
    /// are fetched by [`SuiteApt::update`]).
    pub fn new(cache: &Path, suite: &str, arch: &str) -> Result<Self> {
        let root = cache.join("apt").join(format!("{suite}-{arch}"));
        for d in ["lists/partial", "cache/archives/partial", "parts", "prefs"] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        let (mirror, security) = machine_mirrors()?;
        let list = sources_list(suite, arch, &mirror, &security);
        std::fs::write(root.join("sources.list"), list)
            .with_context(|| format!("writing {}/sources.list", root.display()))?;
        // An empty status file: downloads must not depend on what the host
        // has installed (another architecture, another suite).
        std::fs::write(root.join("status"), "")?;
        Ok(Self {
            root,
            arch: arch.to_string(),
        })
    }

    pub fn update(&self) -> Result<()> {
        sh::run(&mut self.get(["update"]))
    }

    /// `apt-get -q OPTIONS ARGS` with the private configuration and the
    /// empty dpkg status (downloads, never installs on the host).
    pub fn get<const N: usize>(&self, args: [&str; N]) -> Command {
        let mut c = sh::cmd("apt-get", ["-q"]);
        c.args(self.options(true)).args(args);
        c
    }

    /// `apt-cache OPTIONS ARGS` with the private configuration.
    pub fn cache<const N: usize>(&self, args: [&str; N]) -> Command {
        let mut c = sh::cmd("apt-cache", self.options(true));
        c.args(args);
        c
    }

    /// `apt-get install` on the host from these sources: the system's dpkg
    /// status (what is installed), but only the private sources and lists.
    pub fn install(&self, target_release: &str, packages: &[&str]) -> Command {
        let mut c = sh::cmd("apt-get", ["-q", "-y", "--no-install-recommends", "-o"]);
        c.arg("DPkg::Lock::Timeout=300")
            .args(self.options(false))
            .args(["-t", target_release, "install"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn options(&self, empty_status: bool) -> Vec<String> {
        let r = self.root.display();
        let mut o = vec![
            format!("Dir::Etc::SourceList={r}/sources.list"),
            format!("Dir::Etc::SourceParts={r}/parts"),
            format!("Dir::Etc::Preferences={r}/prefs/none"),
            format!("Dir::Etc::PreferencesParts={r}/prefs"),
            format!("Dir::State::Lists={r}/lists"),
            format!("Dir::Cache={r}/cache"),
            "Acquire::Languages=none".to_string(),
            // Downloads go to root-owned private directories.
            "APT::Sandbox::User=root".to_string(),
            // Old suites' Release files carry an expired Valid-Until once
            // they leave security support; the signature still counts.
            "Acquire::Check-Valid-Until=false".to_string(),
        ];
        if empty_status {
            o.push(format!("Dir::State::status={r}/status"));
            o.push(format!("APT::Architecture={}", self.arch));
            o.push(format!("APT::Architectures::={}", self.arch));
        }
        o.into_iter().flat_map(|v| ["-o".to_string(), v]).collect()
    }
}

/// The machine's Debian mirror and security mirror, from apt's own lists.
fn machine_mirrors() -> Result<(String, String)> {
    let sites = sh::read(&mut sh::cmd(
        "apt-get",
        ["indextargets", "--format", "$(SITE)"],
    ))?;
    mirrors(&sites).context(
        "no Debian mirror in apt's lists (`apt-get indextargets` is empty): run `apt-get update`",
    )
}

/// (mirror, security mirror) from `apt-get indextargets --format '$(SITE)'`
/// output; the security mirror defaults to `MIRROR-security`.
pub fn mirrors(sites: &str) -> Option<(String, String)> {
    let mut sites: Vec<&str> = sites
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    sites.sort_unstable();
    sites.dedup();
    let is_security = |s: &str| s.contains("-security");
    let mirror = sites.iter().find(|s| !is_security(s))?.to_string();
    let security = sites
        .iter()
        .find(|s| is_security(s))
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("{mirror}-security"));
    Some((mirror, security))
}

/// The sources.list of `suite`: sid alone (it has no updates or security
/// suite); `X-backports` with X, X-updates and X-security (backports depend
/// on them); any other suite with its updates and security suites.
pub fn sources_list(suite: &str, arch: &str, mirror: &str, security: &str) -> String {
    let deb = |site: &str, dist: &str| {
        format!("deb [arch={arch} signed-by={KEYRING}] {site} {dist} main\n")
    };
    if suite == "sid" || suite == "unstable" {
        return deb(mirror, "sid");
    }
    let base = suite.strip_suffix("-backports").unwrap_or(suite);
    let mut list = deb(mirror, base) + &deb(mirror, &format!("{base}-updates"));
    list += &deb(security, &format!("{base}-security"));
    if base != suite {
        list += &deb(mirror, suite);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_from_indextargets() {
        let sites = "http://deb.debian.org/debian\nhttp://deb.debian.org/debian-security\n\
                     http://deb.debian.org/debian\n";
        assert_eq!(
            mirrors(sites),
            Some((
                "http://deb.debian.org/debian".into(),
                "http://deb.debian.org/debian-security".into()
            ))
        );
        assert_eq!(
            mirrors("http://m/debian\n"),
            Some(("http://m/debian".into(), "http://m/debian-security".into()))
        );
        assert_eq!(mirrors("\n"), None);
    }

    #[test]
    fn sources_lists() {
        let sid = sources_list("sid", "arm64", "http://m/d", "http://m/s");
        assert_eq!(sid.lines().count(), 1);
        assert!(sid.contains("[arch=arm64 signed-by="), "{sid}");
        assert!(sid.ends_with(" http://m/d sid main\n"), "{sid}");

        let bpo = sources_list("bookworm-backports", "amd64", "http://m/d", "http://m/s");
        let dists: Vec<&str> = bpo
            .lines()
            .map(|l| l.split(' ').nth(4).unwrap_or(""))
            .collect();
        assert_eq!(
            dists,
            [
                "bookworm",
                "bookworm-updates",
                "bookworm-security",
                "bookworm-backports"
            ]
        );
        assert!(bpo.contains("http://m/s bookworm-security"), "{bpo}");

        let bullseye = sources_list("bullseye", "amd64", "http://m/d", "http://m/s");
        assert_eq!(bullseye.lines().count(), 3);
        assert!(
            bullseye.contains("http://m/d bullseye-updates main"),
            "{bullseye}"
        );
    }
}
