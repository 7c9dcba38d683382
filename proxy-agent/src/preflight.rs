//! `bpfproxy preflight`: what this node's kernel and system offer bpfproxy,
//! checked before the agent starts (the DaemonSet runs it as an init
//! container), so a missing piece reads as one clear line instead of a
//! crash-looping pod.
//!
//! Each check is ok, degraded (bpfproxy runs, with a documented
//! difference) or missing (it cannot run). The exit code is 0 when
//! bpfproxy can run, 1 when something it needs is missing; `--strict`
//! makes a degraded result exit 2.
use std::{fmt, path::Path};

use aya::{
    programs::ProgramType,
    sys::{is_helper_supported, is_program_supported, BpfHelper},
    util::KernelVersion,
};
use serde::Serialize;

use crate::{
    kernel::Features,
    loader,
    maps::sizes::{self, MapSizes},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Degraded,
    Missing,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

fn check(name: &str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        status,
        detail: detail.into(),
    }
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst status of any check.
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// 0: bpfproxy runs (degraded too, unless `strict`); 1: it cannot; 2:
    /// degraded under `strict`.
    pub fn exit_code(&self, strict: bool) -> u8 {
        match self.status() {
            Status::Ok => 0,
            Status::Degraded if strict => 2,
            Status::Degraded => 0,
            Status::Missing => 1,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Degraded => "DEGRADED",
                Status::Missing => "MISSING",
            };
            writeln!(f, "{:<width$}  {status:<8}  {}", c.name, c.detail)?;
        }
        let verdict = match self.status() {
            Status::Ok => "bpfproxy runs here with every feature",
            Status::Degraded => "bpfproxy runs here, with the differences marked DEGRADED",
            Status::Missing => "bpfproxy cannot run here: see MISSING",
        };
        writeln!(f, "{verdict}")
    }
}

/// The oldest kernel bpfproxy supports.
const FLOOR: (u8, u16) = (5, 10);

/// Runs every check; `bpffs` is where the agent would pin (the programs
/// are verified with scratch pins beside it), `cgroup` the directory it
/// would attach to (None: the node's cgroup2 mount), `sizes` the maps'
/// sizes as `run --map-size-*` would give them.
pub fn run(bpffs: &Path, cgroup: Option<&Path>, sizes: &MapSizes) -> Report {
    let version = KernelVersion::current().ok();
    let features = Features::probe();
    let cgroup_check = match cgroup {
        Some(dir) => cgroup2_dir(dir),
        None => cgroup2(),
    };
    let mut checks = vec![kernel_version(version), cgroup_check, bpffs_check(bpffs)];
    checks.extend(program_types());
    checks.extend(helpers(&features));
    checks.push(tc_attach(version));
    checks.push(btf(Path::new("/sys/kernel/btf/vmlinux").exists()));
    checks.push(memlock(version, memlock_limit(), memcg_max(), sizes));
    checks.push(socket_destroy(crate::sock_diag::probe_destroy()));
    checks.extend(programs(bpffs, &features));
    Report { checks }
}

/// Closing connected UDP sockets whose backend left (sock_diag
/// SOCK_DESTROY, CONFIG_INET_DIAG_DESTROY): without it they stay on the
/// departed backend until their application reconnects.
fn socket_destroy(probe: Result<(), String>) -> Check {
    let name = "UDP socket destroy";
    match probe {
        Ok(()) => check(name, Status::Ok, "sock_diag closes connected UDP sockets whose backend left"),
        Err(e) => check(name, Status::Degraded, format!("connected UDP sockets stay on a departed backend until their application reconnects ({e})")),
    }
}

fn kernel_version(v: Option<KernelVersion>) -> Check {
    let floor = KernelVersion::new(FLOOR.0, FLOOR.1 as u8, 0);
    match v {
        Some(v) if v >= floor => check("kernel", Status::Ok, format!("{v}")),
        Some(v) => check(
            "kernel",
            Status::Missing,
            format!("{v}: bpfproxy needs {}.{} or newer", FLOOR.0, FLOOR.1),
        ),
        None => check("kernel", Status::Degraded, "version unreadable"),
    }
}

fn cgroup2() -> Check {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    match cgroup2_mount(&mounts) {
        Some(at) => check("cgroup v2", Status::Ok, format!("mounted at {at}")),
        None => check(
            "cgroup v2",
            Status::Missing,
            "no cgroup2 mount: the socket programs attach to a cgroup v2 (systemd.unified_cgroup_hierarchy=1)",
        ),
    }
}

/// cgroup2's statfs magic.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// `--cgroup` given: that directory must be on a cgroup v2 (in a
/// container, the host's cgroup mounted in).
fn cgroup2_dir(dir: &Path) -> Check {
    match crate::bpffs::fs_magic(dir) {
        Ok(CGROUP2_SUPER_MAGIC) => check(
            "cgroup v2",
            Status::Ok,
            format!("{} is a cgroup v2", dir.display()),
        ),
        Ok(_) => check(
            "cgroup v2",
            Status::Missing,
            format!("{} is not a cgroup v2 directory", dir.display()),
        ),
        Err(e) => check("cgroup v2", Status::Missing, format!("{e:#}")),
    }
}

/// The first cgroup2 mount point in `/proc/mounts` text.
pub fn cgroup2_mount(mounts: &str) -> Option<&str> {
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).copied())
}

fn bpffs_check(bpffs: &Path) -> Check {
    let root = bpffs.parent().unwrap_or(bpffs);
    match crate::bpffs::is_bpffs(root) {
        Ok(true) => check("bpffs", Status::Ok, format!("{} is a bpf filesystem", root.display())),
        _ => check(
            "bpffs",
            Status::Degraded,
            format!("{} is not a bpf filesystem yet: the agent mounts /sys/fs/bpf itself (pins outlive restarts only on a bpffs the host keeps)", root.display()),
        ),
    }
}

fn program_types() -> Vec<Check> {
    let types = [
        (
            "cgroup sock_addr programs",
            ProgramType::CgroupSockAddr,
            "ClusterIPs at connect()",
        ),
        (
            "sched_cls programs",
            ProgramType::SchedClassifier,
            "NodePorts, externalIPs, LB IPs",
        ),
    ];
    types
        .into_iter()
        .map(|(name, t, what)| match is_program_supported(t) {
            Ok(true) => check(name, Status::Ok, what),
            _ => check(name, Status::Missing, format!("not supported: {what}")),
        })
        .collect()
}

fn helpers(features: &Features) -> Vec<Check> {
    let tc = |h| is_helper_supported(ProgramType::SchedClassifier, h).unwrap_or(false);
    let sock = |h| is_helper_supported(ProgramType::CgroupSockAddr, h).unwrap_or(false);
    let need = |name: &str, ok: bool, what: &str| {
        let status = if ok { Status::Ok } else { Status::Missing };
        check(name, status, what)
    };
    // A helper whose absence degrades a feature: what it gives, or what
    // happens without it.
    let nice = |name: &str, ok: bool, with: &str, without: &str| match ok {
        true => check(name, Status::Ok, with),
        false => check(name, Status::Degraded, without),
    };
    vec![
        nice(
            "helper bpf_set_retval",
            features.set_retval,
            "connect() to a Service without endpoints: ECONNREFUSED",
            "before 5.18: connect() to a Service without endpoints fails with EPERM instead of ECONNREFUSED (at once either way)",
        ),
        nice(
            "helper bpf_ktime_get_coarse_ns",
            features.coarse_clock,
            "conntrack timestamps from the cheap clock",
            "before 5.11: conntrack and affinity timestamps read the precise clock (tens of ns more per packet)",
        ),
        need(
            "helper bpf_get_netns_cookie",
            sock(BpfHelper::BPF_FUNC_get_netns_cookie),
            "session affinity per pod",
        ),
        need(
            "helper bpf_fib_lookup",
            tc(BpfHelper::BPF_FUNC_fib_lookup),
            "forwarding NodePort traffic to other nodes",
        ),
        need(
            "helper bpf_redirect_neigh",
            tc(BpfHelper::BPF_FUNC_redirect_neigh),
            "forwarding NodePort traffic to other nodes",
        ),
    ]
}

fn tc_attach(v: Option<KernelVersion>) -> Check {
    if v.is_some_and(|v| v >= KernelVersion::new(6, 6, 0)) {
        check(
            "TC attach",
            Status::Ok,
            "TCX links (pinned, swapped in place on restart)",
        )
    } else {
        check(
            "TC attach",
            Status::Ok,
            "clsact cls_bpf filters (no TCX before 6.6; same behaviour)",
        )
    }
}

fn btf(present: bool) -> Check {
    let detail = if present {
        "/sys/kernel/btf/vmlinux present (not needed: the object uses no CO-RE)"
    } else {
        "no kernel BTF: not needed (the object uses no CO-RE)"
    };
    check("kernel BTF", Status::Ok, detail)
}

/// Bytes the maps of `sizes` take at least: entries × (key + value), the
/// per-CPU counter array counted once per CPU.
pub fn map_bytes(cpus: u64, sizes: &MapSizes) -> u64 {
    let maps: u64 = sizes
        .by_map()
        .iter()
        .map(|(map, n)| u64::from(*n) * sizes::entry_bytes(map) as u64)
        .sum();
    maps + cpus * u64::from(proxy_common::counters::MAX) * (4 + 8)
}

/// RLIMIT_MEMLOCK's soft limit (None: unlimited).
fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(r.rlim_cur)
}

/// Kernels from 5.11 charge BPF maps to the memory cgroup; before, to
/// RLIMIT_MEMLOCK, which the agent raises to unlimited (as root it can).
/// `memcg_max` is the memory limit of this process's cgroup (None: none).
fn memlock(
    v: Option<KernelVersion>,
    limit: Option<u64>,
    memcg_max: Option<u64>,
    sizes: &MapSizes,
) -> Check {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let need = map_bytes(cpus, sizes);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if v.is_some_and(|v| v >= KernelVersion::new(5, 11, 0)) {
        return match memcg_max {
            Some(max) if max < need => check(
                "map memory",
                Status::Missing,
                format!(
                    "≥ {:.0} MiB, charged to the memory cgroup (5.11+), whose limit is {:.0} MiB: raise the pod's memory limit or lower --map-size-*",
                    mib(need),
                    mib(max)
                ),
            ),
            _ => check(
                "map memory",
                Status::Ok,
                format!(
                    "≥ {:.0} MiB, charged to the memory cgroup (5.11+): give the pod that much",
                    mib(need)
                ),
            ),
        };
    }
    match limit {
        None => check("map memory", Status::Ok, format!("≥ {:.0} MiB under RLIMIT_MEMLOCK (unlimited)", mib(need))),
        Some(l) => check("map memory", Status::Ok, format!("≥ {:.0} MiB under RLIMIT_MEMLOCK ({:.1} MiB now; the agent raises it to unlimited, which needs root or CAP_SYS_RESOURCE)", mib(need), mib(l))),
    }
}

/// The memory limit (`memory.max`) of this process's cgroup v2; None when
/// unlimited or unreadable.
fn memcg_max() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let file = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.max");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Every program through this kernel's verifier, in the variant the agent
/// would load, with scratch pins removed afterwards.
fn programs(bpffs: &Path, features: &Features) -> Vec<Check> {
    let root = bpffs.parent().unwrap_or(bpffs);
    if !matches!(crate::bpffs::is_bpffs(root), Ok(true)) {
        return vec![check(
            "programs",
            Status::Degraded,
            "not verified: no bpf filesystem to load them against",
        )];
    }
    let scratch = root.join(format!("bpfproxy-preflight-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        return vec![check(
            "programs",
            Status::Degraded,
            format!("not verified: creating {}: {e}", scratch.display()),
        )];
    }
    let results = loader::verify_programs(&scratch, features);
    let _ = std::fs::remove_dir_all(&scratch);
    results
        .into_iter()
        .map(|(name, r)| match r {
            Ok(()) => check(&format!("program {name}"), Status::Ok, "loads"),
            Err(e) => check(&format!("program {name}"), Status::Missing, e),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_check_decides_the_exit_code() {
        let r = |s: &[Status]| Report {
            checks: s.iter().map(|&st| check("x", st, "")).collect(),
        };
        assert_eq!(r(&[Status::Ok, Status::Ok]).exit_code(false), 0);
        assert_eq!(r(&[Status::Ok, Status::Degraded]).exit_code(false), 0);
        assert_eq!(r(&[Status::Ok, Status::Degraded]).exit_code(true), 2);
        assert_eq!(r(&[Status::Missing, Status::Degraded]).exit_code(true), 1);
        let text = r(&[Status::Degraded]).to_string();
        assert!(text.contains("DEGRADED"), "{text}");
    }

    #[test]
    fn kernels_before_5_10_are_refused() {
        assert_eq!(
            kernel_version(Some(KernelVersion::new(5, 4, 0))).status,
            Status::Missing
        );
        assert_eq!(
            kernel_version(Some(KernelVersion::new(5, 10, 0))).status,
            Status::Ok
        );
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_a_hybrid_layout() {
        let mounts =
            "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(mounts), Some("/sys/fs/cgroup/unified"));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn the_maps_need_tens_of_mib() {
        let sizes = MapSizes::default();
        let one = map_bytes(1, &sizes);
        assert!(one > 10 << 20 && one < 100 << 20, "{one}");
        assert!(
            map_bytes(4, &sizes) > one,
            "per-CPU counters grow with CPUs"
        );
        let big = MapSizes {
            conntrack: 4 << 20,
            ..sizes
        };
        assert!(map_bytes(1, &big) > one + (100 << 20), "the flags count");
    }

    #[test]
    fn a_memory_limit_below_the_maps_is_reported() {
        let v = Some(KernelVersion::new(6, 1, 0));
        let sizes = MapSizes::default();
        let tight = memlock(v, None, Some(8 << 20), &sizes);
        assert_eq!(tight.status, Status::Missing, "{tight:?}");
        assert!(tight.detail.contains("--map-size-"), "{tight:?}");
        let roomy = memlock(v, None, Some(4 << 30), &sizes);
        assert_eq!(roomy.status, Status::Ok, "{roomy:?}");
    }
}
