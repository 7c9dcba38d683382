//! Metrics, with kube-proxy's names and buckets where dashboards expect
//! them, and `bpfproxy_*` (units in the name) for our own.
use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub traffic_policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    pub registry: Registry,
    /// Queue/update times behind `:10256` (kube-proxy derives health from
    /// the same events as these metrics).
    pub health: crate::health::ProxierHealth,
    pub sync_duration: Histogram,
    pub network_programming_duration: Histogram,
    pub last_sync_timestamp: FloatGauge,
    pub last_queued_timestamp: FloatGauge,
    pub endpoint_changes_total: Counter,
    pub endpoint_changes_pending: Gauge,
    pub service_changes_total: Counter,
    pub service_changes_pending: Gauge,
    pub no_local_endpoints: Family<PolicyLabels, Gauge>,
    pub skipped_objects: Family<SkipLabels, Counter>,
    pub map_write_errors: Family<MapLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub drift_repairs: Counter,
    pub datapath_events: Family<ReasonLabels, Gauge>,
    pub conntrack_gc: Family<ReasonLabels, Counter>,
    pub udp_sockets_closed: Counter,
    pub udp_socket_close_errors: Family<ReasonLabels, Counter>,
    pub repins: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// kube-proxy's network programming latency buckets: 0.25 s, 0.5 s, then
/// 1..59 s by 1 s, 60..115 s by 5 s, 120..300 s by 30 s.
fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            sync_duration.clone(),
        );
        let network_programming_duration = Histogram::new(network_programming_buckets());
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            network_programming_duration.clone(),
        );
        let last_sync_timestamp = FloatGauge::default();
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            last_sync_timestamp.clone(),
        );
        let last_queued_timestamp = FloatGauge::default();
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            last_queued_timestamp.clone(),
        );
        // prometheus-client adds the `_total` suffix to counters itself.
        let endpoint_changes_total = Counter::default();
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            endpoint_changes_total.clone(),
        );
        let endpoint_changes_pending = Gauge::default();
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            endpoint_changes_pending.clone(),
        );
        let service_changes_total = Counter::default();
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            service_changes_total.clone(),
        );
        let service_changes_pending = Gauge::default();
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            service_changes_pending.clone(),
        );
        let no_local_endpoints = Family::<PolicyLabels, Gauge>::default();
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            no_local_endpoints.clone(),
        );
        let skipped_objects = Family::<SkipLabels, Counter>::default();
        r.register(
            "bpfproxy_skipped_objects",
            "Objects or parts of objects left out because they cannot be used, by kind and reason",
            skipped_objects.clone(),
        );
        let map_write_errors = Family::<MapLabels, Counter>::default();
        r.register(
            "bpfproxy_map_write_errors",
            "Failed BPF map writes, by map",
            map_write_errors.clone(),
        );
        let map_entries = Family::<MapLabels, Gauge>::default();
        r.register(
            "bpfproxy_map_entries",
            "Entries of each BPF map: for the maps the agent writes, what the last sync wanted; for the others, counted on a timer",
            map_entries.clone(),
        );
        let map_capacity = Family::<MapLabels, Gauge>::default();
        r.register(
            "bpfproxy_map_capacity_entries",
            "Maximum entries of each BPF map, as the kernel created it",
            map_capacity.clone(),
        );
        let drift_repairs = Counter::default();
        r.register(
            "bpfproxy_drift_repairs",
            "Map writes made by periodic resyncs because the maps differed from the desired state",
            drift_repairs.clone(),
        );
        let datapath_events = Family::<ReasonLabels, Gauge>::default();
        r.register(
            "bpfproxy_datapath_events",
            "Datapath counters (translations, rejects, fail-open errors) summed over CPUs, as of the last sync",
            datapath_events.clone(),
        );
        let conntrack_gc = Family::<ReasonLabels, Counter>::default();
        r.register(
            "bpfproxy_conntrack_gc_entries",
            "Conntrack entries removed by the agent, by reason (idle, backend_gone)",
            conntrack_gc.clone(),
        );
        let udp_sockets_closed = Counter::default();
        r.register(
            "bpfproxy_udp_sockets_closed",
            "Connected UDP sockets closed because the backend the socket LB gave them left their Service",
            udp_sockets_closed.clone(),
        );
        let udp_socket_close_errors = Family::<ReasonLabels, Counter>::default();
        r.register(
            "bpfproxy_udp_socket_close_errors",
            "Failures while finding or closing such sockets, by reason (setns, sock_diag, destroy, unsupported)",
            udp_socket_close_errors.clone(),
        );
        let repins = Counter::default();
        r.register(
            "bpfproxy_repins",
            "Times the agent found its pins gone (bpffs unmounted, pin directory removed) and pinned its maps and links again",
            repins.clone(),
        );
        Self {
            registry: r,
            health: Default::default(),
            sync_duration,
            network_programming_duration,
            last_sync_timestamp,
            last_queued_timestamp,
            endpoint_changes_total,
            endpoint_changes_pending,
            service_changes_total,
            service_changes_pending,
            no_local_endpoints,
            skipped_objects,
            map_write_errors,
            map_entries,
            map_capacity,
            drift_repairs,
            datapath_events,
            conntrack_gc,
            udp_sockets_closed,
            udp_socket_close_errors,
            repins,
        }
    }

    /// Sets the capacity gauge of every map in `sizes`.
    pub fn set_capacity(&self, sizes: &crate::maps::sizes::MapSizes) {
        for (map, n) in sizes.by_map() {
            self.set_map_gauge(&self.map_capacity, map, u64::from(n));
        }
    }

    /// Sets `family{map=…}` to `n`.
    pub fn set_map_gauge(&self, family: &Family<MapLabels, Gauge>, map: &str, n: u64) {
        family
            .get_or_create(&MapLabels {
                map: map.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A change arrived from the source: `Some(true)` a Service, `Some(false)`
    /// an EndpointSlice, None something else (the Node).
    pub fn change_queued(&self, service: Option<bool>) {
        match service {
            Some(true) => {
                self.service_changes_total.inc();
                self.service_changes_pending.inc();
            }
            Some(false) => {
                self.endpoint_changes_total.inc();
                self.endpoint_changes_pending.inc();
            }
            None => {}
        }
        self.last_queued_timestamp.set(unix_now());
        self.health.queued(std::time::SystemTime::now());
    }

    /// A sync consumed every change queued so far.
    pub fn changes_applied(&self) {
        self.service_changes_pending.set(0);
        self.endpoint_changes_pending.set(0);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Seconds since the Unix epoch, as the timestamp gauges want them.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
