//! Metrics, with kube-proxy's names where a dashboard expects them and
//! `bpfproxy_*` (units in the name) for our own.
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

pub struct Metrics {
    pub registry: Registry,
    /// kube-proxy's sync histogram: 0.001 s × 2^n, 15 buckets (to 16.384 s).
    pub sync_duration: Histogram,
    pub last_sync_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub skipped_objects: Family<SkipLabels, Counter>,
    pub map_write_errors: Family<MapLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            sync_duration.clone(),
        );
        let last_sync_timestamp = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            last_sync_timestamp.clone(),
        );
        let skipped_objects = Family::<SkipLabels, Counter>::default();
        registry.register(
            "bpfproxy_skipped_objects",
            "Objects or parts of objects left out because they cannot be used, by kind and reason",
            skipped_objects.clone(),
        );
        let map_write_errors = Family::<MapLabels, Counter>::default();
        registry.register(
            "bpfproxy_map_write_errors",
            "Failed BPF map writes, by map",
            map_write_errors.clone(),
        );
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "bpfproxy_map_entries",
            "Entries in each agent-owned BPF map after the last sync",
            map_entries.clone(),
        );
        Self {
            registry,
            sync_duration,
            last_sync_timestamp,
            skipped_objects,
            map_write_errors,
            map_entries,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
