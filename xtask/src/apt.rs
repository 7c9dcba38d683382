//! Debian packages the tests and the demo use, installed only when missing.

use anyhow::{bail, Result};

use crate::{procs, sh};

/// Every Debian package the tests, benches and demo need (bookworm names).
pub const PACKAGES: &[&str] = &[
    "iproute2",   // ip, ip netns, tc
    "curl",       // HTTP clients in tests and the demo
    "dnsutils",   // dig
    "util-linux", // nsenter, mount
    "procps",     // kill, pgrep, sysctl
    "bpftool",    // inspecting programs, maps and links
    "iptables",   // checking that no iptables rules are needed
    "conntrack",  // conntrack table inspection
    "ethtool",    // veth offload settings
    "tcpdump",    // debugging test traffic
    // The kube-proxy-backends bench loads kube-proxy's nftables ruleset
    // with `nft`, and draws its chart's text with DejaVu Sans.
    "nftables",
    "fonts-dejavu-core",
    // `wg`: the WireGuard shape of the multi-node sandbox (its kernel
    // module exists on the kernel matrix's Debian kernels).
    "wireguard-tools",
    // A real JVM client (tests/java): the JDK reaches IPv4 Services through
    // AF_INET6 sockets and IPv4-mapped addresses; the JDK (not only the
    // JRE) runs a single source file without a javac step.
    "openjdk-17-jdk-headless",
    // The container image: built from scratch with buildah, run by the
    // tests with podman on runc (crun refuses hybrid cgroup layouts).
    "buildah",
    "podman",
    "runc",
];

/// The packages of `wanted` that are not installed.
pub fn missing(wanted: &[&str]) -> Vec<String> {
    // One dpkg-query for all; unknown packages are just absent from its
    // output (and make it exit non-zero, hence no exit-code check).
    let mut c = sh::cmd("dpkg-query", ["-W", "-f=${Package} ${Status}\\n"]);
    c.args(wanted);
    let out = c
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let installed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(name, _)| name)
        .collect();
    wanted
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| p.to_string())
        .collect()
}

/// Installs whatever of [`PACKAGES`] is missing; `apt-get update` only then.
pub fn ensure() -> Result<()> {
    ensure_packages("apt packages", PACKAGES)
}

/// Installs whatever of `packages` is missing from the system's own sources;
/// `apt-get update` only then. `what` names the set in messages.
pub fn ensure_packages(what: &str, packages: &[&str]) -> Result<()> {
    let missing = missing(packages);
    if missing.is_empty() {
        println!("{what}: all {} present", packages.len());
        return Ok(());
    }
    println!("{what}: installing {}", missing.join(" "));
    if !procs::is_root() {
        bail!(
            "Debian packages {} are missing and installing them needs root \
             (run `cargo xtask setup` as root)",
            missing.join(" ")
        );
    }
    // Wait for another apt/dpkg (a concurrent setup) instead of failing.
    let lock = "DPkg::Lock::Timeout=300";
    sh::run(
        sh::cmd("apt-get", ["-o", lock, "-q", "update"]).env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let mut install = sh::cmd(
        "apt-get",
        ["-o", lock, "-q", "install", "-y", "--no-install-recommends"],
    );
    install
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    sh::run(&mut install)?;
    let still = self::missing(packages);
    if !still.is_empty() {
        bail!(
            "apt-get install finished but {} are still missing",
            still.join(" ")
        );
    }
    Ok(())
}
