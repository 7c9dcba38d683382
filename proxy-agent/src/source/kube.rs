//! The API-server source: reflectors for Services, EndpointSlices and this
//! Node, published as one [`Snapshot`] once Services and EndpointSlices have
//! both been listed (nothing is programmed or pruned before that).
use std::{path::Path, sync::Arc};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{self, Lookup, Store},
        watcher, WatchStreamExt,
    },
    Api, Client, Config,
};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{strip, Snapshot};
use crate::{
    metrics::Metrics,
    model::{ServiceObject, SliceObject},
    supervise::Supervisor,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no kubeconfig given and not running in a pod")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("--master {url:?} is not a URL")]
    Master { url: String },
    #[error("creating the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client from `--kubeconfig`, else the pod's service account. `master`
/// overrides the server address: in a pod, the default is the `kubernetes`
/// Service's ClusterIP, which this very agent has to program first.
pub async fn client(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
) -> Result<Client, ClientError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let wrap = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(wrap)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(wrap)?
        }
        None => Config::incluster().map_err(ClientError::InCluster)?,
    };
    if let Some(url) = master {
        config.cluster_url = url.parse().map_err(|_| ClientError::Master {
            url: url.to_string(),
        })?;
    }
    Client::try_from(config).map_err(ClientError::Client)
}

/// Which kind of object changed, for kube-proxy's change counters.
#[derive(Clone, Copy)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn watch_name(self) -> &'static str {
        match self {
            Kind::Service => "Service watch",
            Kind::EndpointSlice => "EndpointSlice watch",
            Kind::Node => "Node watch",
        }
    }
}

/// Watches until `tx` has no receivers. Reflectors retry with backoff and
/// relist on their own (also after 410 Gone), keeping the last complete
/// state meanwhile, so an API-server outage never empties the maps.
pub async fn run(
    client: Client,
    node_name: String,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Option<Snapshot>>,
) -> anyhow::Result<()> {
    let changed = Arc::new(Notify::new());
    // The watches run as tasks of their own; one that ends would freeze
    // its store (and the maps) without a word, so that ends this task.
    let mut watches = Supervisor::new();
    let services = spawn_reflector(
        &mut watches,
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        Kind::Service,
        |svc| ServiceObject::new(&svc),
        &changed,
        &metrics,
    );
    let slices = spawn_reflector(
        &mut watches,
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        Kind::EndpointSlice,
        |slice| SliceObject::new(&slice),
        &changed,
        &metrics,
    );
    let node = spawn_reflector(
        &mut watches,
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        Kind::Node,
        |mut node| {
            strip::node(&mut node);
            node
        },
        &changed,
        &metrics,
    );
    tokio::select! {
        ready = async {
            services.wait_until_ready().await?;
            slices.wait_until_ready().await
        } => ready?,
        ended = watches.first_failure() => return Err(ended.into()),
    }
    info!(
        services = services.state().len(),
        endpoint_slices = slices.state().len(),
        "Services and EndpointSlices synced"
    );
    loop {
        // Notify keeps at most one permit: a burst of events while a
        // snapshot is being taken coalesces into one more snapshot.
        let snap = Snapshot {
            services: services.state(),
            slices: slices.state(),
            node: node.state().into_iter().next(),
            skips: Vec::new(),
        };
        tx.send_replace(Some(snap));
        tokio::select! {
            _ = changed.notified() => {}
            _ = tx.closed() => return Ok(()),
            ended = watches.first_failure() => return Err(ended.into()),
        }
    }
}

/// How fast to retry a failed list/watch: 100 ms doubling to at most
/// 300 ms, plus up to as much again of jitter (backon adds it), so a
/// change made during an API-server outage reaches the node within a
/// second of the server's return (measured: see the outage test). client-go
/// waits up to 30 s; the price here is a few cheap refused connections per
/// second per watch while the server is down, spread out by the jitter.
fn reconnect_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(100))
        .with_max_delay(std::time::Duration::from_millis(300))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// Starts a reflector task for `K` under `watches` and returns its store,
/// which holds each object as `keep` turns it (parsed or stripped).
fn spawn_reflector<K, R>(
    watches: &mut Supervisor,
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    keep: fn(K) -> R,
    changed: &Arc<Notify>,
    metrics: &Arc<Metrics>,
) -> Store<R>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    R: Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<R>();
    // Turned before the store copies them in: the store keeps only what
    // the agent reads, and each full object is dropped once its event has
    // been turned.
    let events = watcher(api, config)
        .backoff(reconnect_backoff())
        .map_ok(move |event| kept(event, keep));
    let stream = reflector::reflector(writer, events);
    watches.spawn_forever(
        kind.watch_name(),
        drive(stream, kind, changed.clone(), metrics.clone()),
    );
    reader
}

/// `event` with its object turned by `keep`.
fn kept<K, R>(event: watcher::Event<K>, keep: fn(K) -> R) -> watcher::Event<R> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(keep(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(keep(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(keep(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

async fn drive<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    kind: Kind,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(_)) | Ok(watcher::Event::Delete(_)) => {
                metrics.change_queued(match kind {
                    Kind::Service => Some(true),
                    Kind::EndpointSlice => Some(false),
                    Kind::Node => None,
                });
                changed.notify_one();
            }
            // A (re)list finished: the store now holds the new full state.
            Ok(watcher::Event::InitDone) => changed.notify_one(),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "watch error; retrying with backoff"),
        }
    }
}
