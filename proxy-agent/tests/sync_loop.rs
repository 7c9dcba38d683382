//! The sync loop end to end over fake maps, on tokio's paused clock: node
//! addresses flow from their channel into the map (before any Service
//! snapshot, too), the periodic resync repairs and counts drift, and a
//! burst of changes costs two syncs, not one per change.
mod common;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use proxy_agent::{
    datapath::{MapState, Op},
    maps::{FakeMaps, LbMaps, MapsError},
    metrics::Metrics,
    model::ModelConfig,
    node_addrs::{entries, NodeAddrEntries, NodeAddrOp},
    source::Snapshot,
    sync::{self, SyncConfig, Syncer},
};
use tokio::{sync::watch, time::sleep};

const MIN: Duration = Duration::from_secs(1);
const PERIOD: Duration = Duration::from_secs(30);
const A: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 168, 1, 10);
const B: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 168, 2, 10);

const YAML: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{port: 80}]\nendpoints: [{addresses: [10.0.0.1]}]\n";

/// Fake maps the test still sees once the loop owns the syncer.
#[derive(Clone)]
struct Shared(Arc<Mutex<FakeMaps>>);

impl Shared {
    fn get(&self) -> MutexGuard<'_, FakeMaps> {
        self.0.lock().expect("maps lock")
    }
}

impl LbMaps for Shared {
    fn read_all(&self) -> Result<MapState, MapsError> {
        self.get().read_all()
    }
    fn apply(&mut self, op: &Op) -> Result<(), MapsError> {
        self.get().apply(op)
    }
    fn read_node_addrs(&self) -> Result<NodeAddrEntries, MapsError> {
        self.get().read_node_addrs()
    }
    fn apply_node_addr(&mut self, op: &NodeAddrOp) -> Result<(), MapsError> {
        self.get().apply_node_addr(op)
    }
}

struct Loop {
    maps: Shared,
    metrics: Arc<Metrics>,
    snap: watch::Sender<Option<Snapshot>>,
    node: watch::Sender<Option<NodeAddrEntries>>,
}

impl Loop {
    /// The loop running with the node at address A and no snapshot yet.
    fn start() -> Self {
        let maps = Shared(Arc::new(Mutex::new(FakeMaps::new(64))));
        let metrics = Arc::new(Metrics::new());
        let syncer =
            Syncer::new(maps.clone(), metrics.clone(), ModelConfig::default()).expect("syncer");
        let (snap, snap_rx) = watch::channel(None);
        let (node, node_rx) = watch::channel(Some(entries(&[A])));
        let (hc, _) = watch::channel(Default::default());
        let config = SyncConfig {
            min_interval: MIN,
            period: PERIOD,
        };
        tokio::spawn(sync::run(syncer, snap_rx, node_rx, config, hc));
        Self {
            maps,
            metrics,
            snap,
            node,
        }
    }

    /// Service syncs so far (the loop's duration histogram counts them).
    fn syncs(&self) -> u64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_duration_seconds_count "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

#[tokio::test(start_paused = true)]
async fn node_addresses_flow_into_the_map_and_drift_is_repaired_at_the_period() {
    let l = Loop::start();
    sleep(Duration::from_millis(10)).await;
    assert_eq!(
        l.maps.get().node_addrs,
        entries(&[A]),
        "written before the source's first snapshot"
    );
    l.node.send_replace(Some(entries(&[A, B])));
    sleep(MIN).await;
    assert_eq!(l.maps.get().node_addrs, entries(&[A, B]), "a new address");
    // Someone deletes B's entry behind the agent's back.
    let b = u32::from_ne_bytes(B.octets());
    l.maps.get().node_addrs.remove(&b);
    sleep(PERIOD / 2).await;
    assert!(
        !l.maps.get().node_addrs.contains_key(&b),
        "not before the period"
    );
    sleep(PERIOD).await;
    assert_eq!(l.maps.get().node_addrs, entries(&[A, B]), "repaired");
    assert_eq!(l.metrics.drift_repairs.get(), 1, "and counted as drift");
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_costs_one_sync_at_once_and_one_after_min_interval() {
    let l = Loop::start();
    l.snap.send_replace(Some(common::snapshot(YAML)));
    sleep(MIN * 3).await;
    assert_eq!(l.syncs(), 1, "the first snapshot");
    for _ in 0..100 {
        l.snap.send_replace(Some(common::snapshot(YAML)));
        sleep(Duration::from_micros(100)).await;
    }
    assert_eq!(l.syncs(), 2, "the first change at once");
    sleep(MIN).await;
    assert_eq!(l.syncs(), 3, "the other 99 together, after min_interval");
    sleep(PERIOD / 2).await;
    assert_eq!(l.syncs(), 3, "then quiet until the period");
    assert!(!l.maps.get().state.services.is_empty());
}
