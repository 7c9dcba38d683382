//! The `bpfproxy` command line. anyhow lives here, at the edge.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::error;

use crate::{
    agent, bpffs::check_bpffs, drift, dump, explain, loader, maps::sizes::MapSizes, model::Budget,
    node_addrs, preflight, snat_ports::SnatPorts,
};

/// bpfproxy: an eBPF replacement for kube-proxy.
#[derive(Parser, Debug)]
#[command(name = "bpfproxy", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: watch Services and EndpointSlices and program the kernel.
    Run(Box<RunArgs>),
    /// Show what the kernel maps hold: every frontend with its backends.
    Dump(DumpArgs),
    /// Remove the pinned programs and maps (uninstall). Live connections
    /// keep working; new ones to ClusterIPs stop being translated.
    Cleanup(PinArgs),
    /// Check what this node's kernel offers bpfproxy: a table of what
    /// works, what is degraded and why. Exit 0 when bpfproxy can run, 1
    /// when something it needs is missing (2 for degraded with --strict).
    Preflight(PreflightArgs),
    /// Walk the kernel's decision for one connection, from the pinned maps:
    /// the frontend it matches (or why none), the filters, source ranges,
    /// session affinity, the candidate backends and an existing conntrack
    /// flow. Exit 0 when a frontend matched, 1 when none did, 2 on errors.
    Explain(ExplainArgs),
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// The client: IP, or IP:PORT to find its existing flow.
    #[arg(long)]
    pub src: Option<String>,
    /// The destination: IP:PORT[/PROTO] (TCP by default).
    #[arg(long)]
    pub dst: String,
    /// Explain a packet arriving from outside the node (the TC programs:
    /// NodePorts, externalIPs, LB IPs, conntrack, source ranges, affinity by
    /// client address). Default: a process on this node or in a pod here
    /// connecting (the socket programs: ClusterIPs too, affinity by netns).
    #[arg(long)]
    pub from_outside: bool,
    /// Socket view: the client's network namespace (/proc/PID/ns/net,
    /// /run/netns/NAME), whose cookie keys its session affinity.
    #[arg(long, conflicts_with_all = ["netns_cookie", "from_outside"])]
    pub netns: Option<PathBuf>,
    /// Socket view: the client's network namespace cookie.
    #[arg(long, conflicts_with = "from_outside")]
    pub netns_cookie: Option<u64>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Exit 2 when something is degraded.
    #[arg(long)]
    pub strict: bool,
    /// The cgroup v2 directory the agent will attach to (as `run
    /// --cgroup`); default: look for the node's cgroup2 mount.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Mount the bpffs at /sys/fs/bpf first when the node has none, as
    /// `run` would (the DaemonSet's privileged init container does it, so
    /// the agent needs no mount rights).
    #[arg(long)]
    pub mount_bpffs: bool,
    /// The map sizes `run` will get: the memory check counts them.
    #[command(flatten)]
    pub map_sizes: MapSizes,
}

#[derive(clap::Args, Debug)]
pub struct PinArgs {
    /// bpffs directory for the pins (a versioned sub-directory is used).
    #[arg(long, default_value = "/sys/fs/bpf/bpfproxy")]
    pub bpffs: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Compute the desired state again, as the agent would (from
    /// `--source` or the API server, with the same flags as `run`), and
    /// compare it with the maps: print every difference and exit 1 when
    /// there is one.
    #[arg(long)]
    pub check: bool,
    /// With --check: how long to wait for the source's first complete view.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub check_timeout: Duration,
    #[command(flatten)]
    pub services: ServicesArgs,
}

/// Where Services and EndpointSlices come from and how they become the
/// desired state: shared by `run` and `dump --check`, so the check builds
/// exactly what the agent would.
#[derive(clap::Args, Debug, Clone)]
pub struct ServicesArgs {
    /// Directory of Kubernetes YAML (Services, EndpointSlices), re-read on
    /// change: the embedded default that needs no cluster. Without it,
    /// bpfproxy watches the API server.
    #[arg(long, conflicts_with_all = ["kubeconfig", "master"])]
    pub source: Option<PathBuf>,
    /// kubeconfig for the API server (default: the pod's service account).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// API server URL, overriding the kubeconfig's or the in-cluster one
    /// (which is the `kubernetes` ClusterIP this agent has to program
    /// first: in a DaemonSet, give the real address).
    #[arg(long)]
    pub master: Option<String>,
    /// This node's name (default: $NODE_NAME, else the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Services labelled service.kubernetes.io/service-proxy-name=<this>
    /// are handled; those naming any other proxy are left alone.
    #[arg(long)]
    pub service_proxy_name: Option<String>,
    /// Frontends one Service may have (ports × its addresses + NodePorts);
    /// a Service with more is skipped whole, logged and counted
    /// (`bpfproxy_skipped_objects_total{reason="over_budget"}`), so one
    /// tenant's object cannot use up what every other Service needs.
    #[arg(long, default_value_t = Budget::default().frontends_per_service)]
    pub max_frontends_per_service: usize,
    /// Backend slots one Service may have (its frontends × endpoints).
    #[arg(long, default_value_t = Budget::default().backends_per_service)]
    pub max_backends_per_service: usize,
    /// NodePorts answer only on node addresses inside these CIDRs,
    /// comma-separated (kube-proxy's nodePortAddresses). Default: every
    /// non-loopback IPv4 address of the node. Addresses are re-read every
    /// 2 s.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<node_addrs::Ipv4Cidr>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub services: ServicesArgs,
    /// cgroup v2 directory the socket programs attach to (default: the root
    /// of the cgroup2 mount, i.e. every process on the node).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Devices the TC programs (NodePort, externalIPs, LoadBalancer IPs
    /// from outside the node) attach to, comma-separated; `none` for no
    /// per-packet datapath. Default (`auto`): the devices carrying the
    /// node's NodePort addresses, except pod bridges, overlays and veths,
    /// followed as addresses come and go. Devices dropped from the list
    /// are detached.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// How the TC programs attach: TCX links where the kernel has them
    /// (≥ 6.6), a clsact `cls_bpf` filter otherwise; `clsact` forces the
    /// older path.
    #[arg(long, value_enum, default_value_t = loader::TcMode::Auto)]
    pub tc_attach: loader::TcMode,
    #[command(flatten)]
    pub pins: PinArgs,
    #[command(flatten)]
    pub map_sizes: MapSizes,
    /// Source ports for NodePort/external traffic SNATed to a backend on
    /// another node, FIRST-LAST. Reserved in
    /// net.ipv4.ip_local_reserved_ports at start, so the node's own sockets
    /// never use them; the default lies above Linux's default ephemeral
    /// range (32768-60999).
    #[arg(long, default_value_t = SnatPorts::default())]
    pub snat_port_range: SnatPorts,
    /// Where /metrics, /healthz and /proxyMode are served; empty disables.
    /// Loopback by default, as kube-proxy binds it (the DaemonSet opens it
    /// to Prometheus with 0.0.0.0:10249).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,
    /// Per-backend series of the per-Service traffic counters
    /// (`bpfproxy_service_backend_connections_total{backend=…}`), at most
    /// this many; 0 (the default) exports per Service port only, whose
    /// cardinality the Services bound.
    #[arg(long, default_value_t = 0)]
    pub service_metrics_backends: usize,
    /// Where /healthz and /livez (kube-proxy's JSON) are served; empty disables.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,
    /// Minimum time between syncs; bursts of changes coalesce into one.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub min_sync_period: Duration,
    /// Full resync period: re-read the maps and repair drift.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sync_period: Duration,
    /// Load the socket programs as for a kernel without bpf_set_retval
    /// (before 5.18), as the agent does there by itself: for testing that
    /// variant on a newer kernel.
    #[arg(long, hide = true)]
    pub assume_no_set_retval: bool,
}

pub fn main() -> ExitCode {
    // Before any thread starts (the arena limit applies to new arenas).
    let tuned = crate::malloc::tune();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tracing::debug!(tuned, "malloc settings");
    let result = match cli.command {
        Command::Run(args) => agent::run(*args),
        Command::Dump(args) if args.check => return check_cmd(&args),
        Command::Dump(args) => dump_cmd(&args),
        Command::Cleanup(args) => cleanup(&args.bpffs),
        Command::Preflight(args) => return preflight_cmd(&args),
        Command::Explain(args) => return explain_cmd(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn preflight_cmd(args: &PreflightArgs) -> ExitCode {
    if args.mount_bpffs {
        // A failure shows again as the bpffs line of the report.
        if let Err(e) = check_bpffs(&args.pins.bpffs) {
            error!(error = %format!("{e:#}"), "mounting the bpffs");
        }
    }
    let sizes = args.map_sizes.for_this_machine();
    let report = preflight::run(&args.pins.bpffs, args.cgroup.as_deref(), &sizes);
    let text = if args.json {
        serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
    } else {
        report.to_string()
    };
    // A closed pipe (`bpfproxy preflight | head`) is no failure.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    ExitCode::from(report.exit_code(args.strict))
}

fn dump_cmd(args: &DumpArgs) -> anyhow::Result<()> {
    let view = dump::read(&args.pins.bpffs).with_context(|| {
        format!(
            "reading the maps pinned under {} (is the agent installed there?)",
            args.pins.bpffs.display()
        )
    })?;
    print_out(args.json, &view, || view.to_string())
}

/// Prints `value` as JSON or as `text()`. A closed pipe (`bpfproxy dump |
/// head`) is not an error (print! would panic on it).
fn print_out<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(value)?)
    } else {
        text()
    };
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `dump --check`: exit 0 when the maps hold what the agent would write,
/// 1 when they differ (each difference printed), 2 when the check could
/// not run.
fn check_cmd(args: &DumpArgs) -> ExitCode {
    let found = match drift::check_pinned(&args.pins.bpffs, &args.services, args.check_timeout) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("bpfproxy: {e:#}");
            return ExitCode::from(2);
        }
    };
    let printed = print_out(args.json, &found, || {
        if found.is_empty() {
            "no drift: the maps hold what the agent would write\n".to_string()
        } else {
            found.iter().map(|d| format!("drift: {d}\n")).collect()
        }
    });
    if let Err(e) = printed {
        eprintln!("bpfproxy: {e:#}");
        return ExitCode::from(2);
    }
    if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `explain`: exit 0 when a frontend matched, 1 when none did, 2 when the
/// question or the maps could not be read.
fn explain_cmd(args: &ExplainArgs) -> ExitCode {
    let answer = explain_query(args).and_then(|q| {
        let snap = explain::snapshot::read(&args.pins.bpffs).with_context(|| {
            format!(
                "reading the maps pinned under {}",
                args.pins.bpffs.display()
            )
        })?;
        Ok(explain::explain(&q, &snap))
    });
    let ex = match answer {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("bpfproxy: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = print_out(args.json, &ex, || ex.to_string()) {
        eprintln!("bpfproxy: {e:#}");
        return ExitCode::from(2);
    }
    ExitCode::from(if ex.frontend.is_some() { 0 } else { 1 })
}

fn explain_query(args: &ExplainArgs) -> anyhow::Result<explain::Query> {
    let src = args.src.as_deref().map(explain::parse_src).transpose();
    let (dst, dport, proto) = explain::parse_dst(&args.dst).map_err(anyhow::Error::msg)?;
    let netns_cookie = match &args.netns {
        Some(path) => Some(
            explain::netns::cookie(path)
                .with_context(|| format!("the cookie of network namespace {}", path.display()))?,
        ),
        None => args.netns_cookie,
    };
    Ok(explain::Query {
        view: if args.from_outside {
            explain::View::FromOutside
        } else {
            explain::View::Socket
        },
        src: src.map_err(anyhow::Error::msg)?,
        dst,
        dport,
        proto,
        netns_cookie,
    })
}

fn cleanup(bpffs: &Path) -> anyhow::Result<()> {
    let dir = loader::pin_dir(bpffs);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    println!("removed {}", dir.display());
    Ok(())
}
