//! `bpfproxy run`: start-up (pins, programs, maps), then the background
//! tasks under a [`Supervisor`] until SIGTERM — or until one of them ends,
//! which is fatal.
use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc};

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::info;

use crate::{
    bpffs,
    cli::{RunArgs, ServicesArgs},
    ct_sweeper, healthcheck, kernel, loader, map_stats,
    maps::pinned::PinnedMaps,
    metrics::Metrics,
    model::{Budget, ModelConfig, NodeContext},
    node_watch::{Devices, NodeWatch},
    server, service_stats, snat_ports,
    source::{kube as kube_source, watch_dir, Snapshot},
    stale_udp,
    supervise::Supervisor,
    sync::{self, SyncConfig, Syncer},
};

/// What start-up hands to the background tasks.
struct Started {
    node: String,
    pin_dir: PathBuf,
    node_watch: NodeWatch,
    syncer: Syncer<PinnedMaps>,
    metrics: Arc<Metrics>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = start(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(serve(args, started));
    // Blocking work still in flight (a conntrack walk, a visit of the
    // node's namespaces) is best effort: it must not hold up the exit the
    // DaemonSet waits for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Everything before the first sync: the pins and their lock, the
/// programs, the node's addresses and devices, the maps.
fn start(args: &RunArgs) -> anyhow::Result<Started> {
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => cgroup2_root()?,
    };
    let node = node_name(&args.services);
    bpffs::check_bpffs(&args.pins.bpffs)?;
    let pin_dir = loader::pin_dir(&args.pins.bpffs);
    let lock = bpffs::lock_pins(&pin_dir)?;
    info!(node = %node, cgroup = %cgroup.display(), bpffs = %args.pins.bpffs.display(), source = ?args.services.source, "starting bpfproxy");

    let devices = Devices::from_flag(&args.devices).map_err(anyhow::Error::msg)?;
    raise_memlock();
    snat_ports::reserve(args.snat_port_range);
    let (mut loaded, attached) = loader::load(
        &args.pins.bpffs,
        &cgroup,
        args.tc_attach,
        &features(args),
        &args.map_sizes.for_this_machine(),
        args.snat_port_range,
    )
    .context("loading and attaching the kernel programs")?;
    loaded.keep_lock(lock);
    info!(?attached, sizes = ?loaded.sizes(), "socket programs ready");
    let mut metrics = Metrics::new();
    metrics
        .registry
        .register_collector(Box::new(service_stats::ServiceTraffic {
            pin_dir: pin_dir.clone(),
            max_backends: args.service_metrics_backends,
        }));
    let metrics = Arc::new(metrics);
    let mut node_watch = NodeWatch::new(
        loaded,
        pin_dir.clone(),
        args.services.nodeport_addresses.clone(),
        devices,
        metrics.clone(),
    );
    node_watch.refresh()?;
    let maps = PinnedMaps::open(&pin_dir).context("opening the pinned maps")?;
    let syncer = Syncer::new(maps, metrics.clone(), model_config(&args.services, &node))
        .context("reading the pinned maps")?;
    Ok(Started {
        node,
        pin_dir,
        node_watch,
        syncer,
        metrics,
    })
}

/// The background tasks, until SIGTERM or the first of them to end.
async fn serve(args: RunArgs, s: Started) -> anyhow::Result<()> {
    let mut tasks = Supervisor::new();
    serve_http(&args, &s.metrics, &mut tasks)?;
    let (tx, rx) = watch::channel(None);
    let source = source_task(&args.services, s.node, s.metrics.clone(), tx).await?;
    tasks.spawn("source", source);
    let (hc_tx, hc_rx) = watch::channel(Default::default());
    tasks.spawn(
        "healthcheck",
        healthcheck::run(hc_rx, s.metrics.clone(), args.sync_period * 2),
    );
    let config = SyncConfig {
        min_interval: args.min_sync_period,
        period: args.sync_period,
    };
    let live_pairs = s.syncer.live_pairs();
    let node_addrs = s.node_watch.addresses();
    tasks.spawn_forever("sync", sync::run(s.syncer, rx, node_addrs, config, hc_tx));
    tasks.spawn(
        "conntrack-sweeper",
        ct_sweeper::run(s.pin_dir.clone(), s.metrics.clone(), live_pairs.clone()),
    );
    tasks.spawn(
        "udp-socket-closer",
        stale_udp::run(s.pin_dir.clone(), s.metrics.clone(), live_pairs),
    );
    tasks.spawn("node-watch", s.node_watch.run());
    tasks.spawn("map-stats", map_stats::run(s.pin_dir, s.metrics.clone()));
    tokio::select! {
        ended = tasks.first_failure() => {
            tracing::error!(task = ended.task, "exiting with status 1, for the DaemonSet to restart the agent");
            Err(ended.into())
        }
        () = shutdown_signal() => {
            // Pins stay: the kernel keeps serving Services while no
            // agent runs (upgrades, restarts).
            info!("shutting down; datapath stays in place");
            Ok(())
        }
    }
}

type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// The watch of Services and EndpointSlices: the manifest directory, or
/// the API server (connected to here, so a bad kubeconfig fails start-up).
pub(crate) async fn source_task(
    args: &ServicesArgs,
    node: String,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Option<Snapshot>>,
) -> anyhow::Result<Task> {
    const WHAT: &str = "watching Services and EndpointSlices";
    Ok(match &args.source {
        Some(dir) => {
            let run = watch_dir::run(dir.clone(), metrics, tx);
            Box::pin(async move { run.await.context(WHAT) })
        }
        None => {
            let client = kube_source::client(args.kubeconfig.as_deref(), args.master.as_deref())
                .await
                .context("connecting to the API server")?;
            let run = kube_source::run(client, node, metrics, tx);
            Box::pin(async move { run.await.context(WHAT) })
        }
    })
}

pub(crate) fn node_name(args: &ServicesArgs) -> String {
    args.node_name
        .clone()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn features(args: &RunArgs) -> kernel::Features {
    let mut features = kernel::Features::probe();
    if args.assume_no_set_retval {
        features.set_retval = false;
    }
    if !features.set_retval {
        info!("kernel without bpf_set_retval (before 5.18): connect() to a Service without endpoints fails with EPERM instead of ECONNREFUSED");
    }
    features
}

pub(crate) fn model_config(args: &ServicesArgs, node: &str) -> ModelConfig {
    ModelConfig {
        node: NodeContext {
            name: node.to_string(),
            zone: None,
        },
        proxy_name: args.service_proxy_name.clone(),
        budget: Budget {
            frontends_per_service: args.max_frontends_per_service,
            backends_per_service: args.max_backends_per_service,
        },
    }
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

/// Starts the :10249 and :10256 servers (unless disabled with "").
fn serve_http(
    args: &RunArgs,
    metrics: &Arc<Metrics>,
    tasks: &mut Supervisor,
) -> anyhow::Result<()> {
    let timeout = args.sync_period * 2;
    let m = metrics.clone();
    spawn_server(
        tasks,
        "metrics-server",
        &args.metrics_bind_address,
        move |p| server::metrics_routes(&m, p),
    )
    .context("--metrics-bind-address")?;
    let m = metrics.clone();
    spawn_server(
        tasks,
        "healthz-server",
        &args.healthz_bind_address,
        move |p| server::health_routes(&m, p, timeout),
    )
    .context("--healthz-bind-address")
}

/// Serves `routes` on `addr` in the background; an empty `addr` disables.
fn spawn_server<F>(
    tasks: &mut Supervisor,
    name: &'static str,
    addr: &str,
    routes: F,
) -> anyhow::Result<()>
where
    F: Fn(&str) -> hyper::Response<server::Body> + Send + Sync + 'static,
{
    if addr.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = addr.parse()?;
    tasks.spawn_forever(name, server::serve(name, addr, routes));
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
