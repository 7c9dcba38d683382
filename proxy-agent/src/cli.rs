//! The `bpfproxy` command line. anyhow lives here, at the edge.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tracing::{error, info};

use crate::{
    dump, healthcheck, kernel, loader,
    maps::{pinned::PinnedMaps, sizes::MapSizes},
    metrics::Metrics,
    model::{Budget, ModelConfig, NodeContext},
    node_addrs,
    node_watch::{Devices, NodeWatch},
    preflight, server,
    source::{kube as kube_source, watch_dir},
    sync::{self, SyncConfig, Syncer},
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
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
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
    /// NodePorts answer only on node addresses inside these CIDRs,
    /// comma-separated (kube-proxy's nodePortAddresses). Default: every
    /// non-loopback IPv4 address of the node. Addresses are re-read every
    /// 2 s.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<node_addrs::Ipv4Cidr>,
    #[command(flatten)]
    pub pins: PinArgs,
    #[command(flatten)]
    pub map_sizes: MapSizes,
    /// This node's name (default: $NODE_NAME, else the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Services labelled service.kubernetes.io/service-proxy-name=<this>
    /// are handled; those naming any other proxy are left alone.
    #[arg(long)]
    pub service_proxy_name: Option<String>,
    /// Where /metrics, /healthz and /proxyMode are served; empty disables.
    /// Loopback by default, as kube-proxy binds it (the DaemonSet opens it
    /// to Prometheus with 0.0.0.0:10249).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,
    /// Where /healthz and /livez (kube-proxy's JSON) are served; empty disables.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,
    /// Minimum time between syncs; bursts of changes coalesce into one.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub min_sync_period: Duration,
    /// Full resync period: re-read the maps and repair drift.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sync_period: Duration,
    /// Frontends one Service may have (ports × its addresses + NodePorts);
    /// a Service with more is skipped whole, logged and counted
    /// (`bpfproxy_skipped_objects_total{reason="over_budget"}`), so one
    /// tenant's object cannot use up what every other Service needs.
    #[arg(long, default_value_t = Budget::default().frontends_per_service)]
    pub max_frontends_per_service: usize,
    /// Backend slots one Service may have (its frontends × endpoints).
    #[arg(long, default_value_t = Budget::default().backends_per_service)]
    pub max_backends_per_service: usize,
    /// Load the socket programs as for a kernel without bpf_set_retval
    /// (before 5.18), as the agent does there by itself: for testing that
    /// variant on a newer kernel.
    #[arg(long, hide = true)]
    pub assume_no_set_retval: bool,
}

pub fn main() -> ExitCode {
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
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Dump(args) => dump_cmd(&args),
        Command::Cleanup(args) => cleanup(&args.bpffs),
        Command::Preflight(args) => return preflight_cmd(&args),
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
    let report = preflight::run(&args.pins.bpffs, args.cgroup.as_deref());
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
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&view)?)
    } else {
        view.to_string()
    };
    // `bpfproxy dump | head` closes the pipe early: that is not an error
    // (print! would panic on it).
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn cleanup(bpffs: &Path) -> anyhow::Result<()> {
    let dir = loader::pin_dir(bpffs);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    println!("removed {}", dir.display());
    Ok(())
}

/// The first cgroup2 mount point in /proc/mounts: the node's root cgroup.
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(PathBuf::from))
        .context("no cgroup2 mount found; bpfproxy needs cgroup v2")
}

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The pin directory must be on a bpffs, or pinning fails with an obscure
/// error; say what to do instead.
fn check_bpffs(path: &Path) -> anyhow::Result<()> {
    // Many distributions leave /sys/fs/bpf unmounted; mount it as Cilium
    // does (with the DaemonSet's Bidirectional propagation it shows on the
    // host, so pins survive pod restarts).
    let default_root = Path::new("/sys/fs/bpf");
    if path.starts_with(default_root) && !is_bpffs(default_root)? {
        let src = std::ffi::CString::new("bpf")?;
        let dst = std::ffi::CString::new("/sys/fs/bpf")?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting bpffs on /sys/fs/bpf: {}",
                std::io::Error::last_os_error()
            );
        }
        info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    if !is_bpffs(path)? {
        bail!(
            "{} is not on a bpf filesystem; mount one first: mount -t bpf bpf /sys/fs/bpf",
            path.display()
        );
    }
    Ok(())
}

pub(crate) fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    Ok(fs_magic(path)? == BPF_FS_MAGIC)
}

/// The statfs magic number of the filesystem `path` is on.
pub(crate) fn fs_magic(path: &Path) -> anyhow::Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs across targets
    Ok(st.f_type as i64)
}

/// One agent per pin directory: two would fight over the same maps and
/// links (each pruning what the other programs). The lock is a flock on
/// the directory itself, so it holds across containers sharing the bpffs,
/// and goes with the process, however it ends.
fn lock_pins(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            bail!(
                "another bpfproxy agent runs on {} (one agent per node and bpffs; `bpfproxy dump` reads it without stopping it)",
                dir.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", dir.display()));
    }
    Ok(f)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (often 64 KiB),
/// far below what the maps take: lift it, as root may. Later kernels
/// charge the memory cgroup instead and ignore it.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "raising RLIMIT_MEMLOCK (kernels before 5.11 need it for the maps)");
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => cgroup2_root()?,
    };
    let node = args
        .node_name
        .clone()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    check_bpffs(&args.pins.bpffs)?;
    let _lock = lock_pins(&loader::pin_dir(&args.pins.bpffs))?;
    info!(node = %node, cgroup = %cgroup.display(), bpffs = %args.pins.bpffs.display(), source = ?args.source, "starting bpfproxy");

    let devices = Devices::from_flag(&args.devices).map_err(anyhow::Error::msg)?;
    raise_memlock();
    let mut features = kernel::Features::probe();
    if args.assume_no_set_retval {
        features.set_retval = false;
    }
    if !features.set_retval {
        info!("kernel without bpf_set_retval (before 5.18): connect() to a Service without endpoints fails with EPERM instead of ECONNREFUSED");
    }
    let (loaded, attached) = loader::load(
        &args.pins.bpffs,
        &cgroup,
        args.tc_attach,
        &features,
        &args.map_sizes,
    )
    .context("loading and attaching the kernel programs")?;
    info!(?attached, "socket programs ready");
    let mut node_watch = NodeWatch::new(
        loaded,
        loader::pin_dir(&args.pins.bpffs),
        args.nodeport_addresses.clone(),
        devices,
    );
    node_watch.refresh()?;
    node_watch
        .spawn()
        .context("starting the node address watcher")?;
    let maps =
        PinnedMaps::open(&loader::pin_dir(&args.pins.bpffs)).context("opening the pinned maps")?;
    let metrics = Arc::new(Metrics::new());
    let model = ModelConfig {
        node: NodeContext {
            name: node.clone(),
            zone: None,
        },
        proxy_name: args.service_proxy_name.clone(),
        budget: Budget {
            frontends_per_service: args.max_frontends_per_service,
            backends_per_service: args.max_backends_per_service,
        },
    };
    let syncer = Syncer::new(maps, metrics.clone(), model).context("reading the pinned maps")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        serve_http(&args, &metrics)?;
        let (tx, rx) = watch::channel(None);
        let source = match &args.source {
            Some(dir) => tokio::spawn(watch_dir::run(dir.clone(), metrics.clone(), tx)),
            None => {
                let client =
                    kube_source::client(args.kubeconfig.as_deref(), args.master.as_deref())
                        .await
                        .context("connecting to the API server")?;
                tokio::spawn(kube_source::run(client, node, metrics.clone(), tx))
            }
        };
        let config = SyncConfig {
            min_interval: args.min_sync_period,
            period: args.sync_period,
        };
        let (hc_tx, hc_rx) = watch::channel(Default::default());
        tokio::spawn(healthcheck::run(
            hc_rx,
            metrics.clone(),
            args.sync_period * 2,
        ));
        let sync = tokio::spawn(sync::run(syncer, rx, config, hc_tx));
        tokio::select! {
            r = source => match r {
                Ok(Ok(())) => bail!("source stopped"),
                Ok(Err(e)) => Err(e.context("watching Services and EndpointSlices")),
                Err(e) => bail!("source task panicked: {e}"),
            },
            _ = sync => bail!("sync loop stopped"),
            _ = shutdown_signal() => {
                // Pins stay: the kernel keeps serving Services while no
                // agent runs (upgrades, restarts).
                info!("shutting down; datapath stays in place");
                Ok(())
            }
        }
    })
}

/// Starts the :10249 and :10256 servers (unless disabled with "").
fn serve_http(args: &RunArgs, metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    let timeout = args.sync_period * 2;
    let m = metrics.clone();
    spawn_server("metrics", &args.metrics_bind_address, move |p| {
        server::metrics_routes(&m, p)
    })
    .context("--metrics-bind-address")?;
    let m = metrics.clone();
    spawn_server("healthz", &args.healthz_bind_address, move |p| {
        server::health_routes(&m, p, timeout)
    })
    .context("--healthz-bind-address")
}

/// Serves `routes` on `addr` in the background; an empty `addr` disables.
fn spawn_server<F>(name: &'static str, addr: &str, routes: F) -> anyhow::Result<()>
where
    F: Fn(&str) -> hyper::Response<server::Body> + Send + Sync + 'static,
{
    if addr.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = addr.parse()?;
    tokio::spawn(server::serve(name, addr, routes));
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
