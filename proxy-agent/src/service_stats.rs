//! Per-Service traffic counters, counted by the kernel programs per
//! frontend (revNAT id) and per (frontend, backend) pair, read from the pins
//! at every scrape of `/metrics` and by `bpfproxy dump`.
//!
//! A Service port has several frontends (ClusterIP, NodePort, externalIPs,
//! LB IPs): the metrics add them up per `namespace`, `service`, `port`,
//! the dump shows each frontend's own.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, MapData};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
};
use proxy_common::{maps as names, svc_stat, BackendStatKey, BackendValue, ServiceStats};
use tracing::debug;

use crate::maps::{pinned, MapsError};

/// The counters of one frontend by name (`svc_stat::NAMES`), zeros left out.
pub fn named(stats: &ServiceStats) -> BTreeMap<String, u64> {
    svc_stat::NAMES
        .iter()
        .zip(stats.counts)
        .filter(|(name, n)| !name.is_empty() && *n > 0)
        .map(|(name, n)| (name.to_string(), n))
        .collect()
}

/// The counters of the frontends `ids`, from the pinned array.
pub fn read(dir: &Path, ids: &BTreeSet<u16>) -> Result<BTreeMap<u16, ServiceStats>, MapsError> {
    let array: Array<MapData, ServiceStats> = pinned::open(dir, names::SERVICE_STATS)?;
    let mut out = BTreeMap::new();
    for id in ids {
        let read = |source| MapsError::Read {
            map: names::SERVICE_STATS,
            source,
        };
        out.insert(*id, array.get(&u32::from(*id), 0).map_err(read)?);
    }
    Ok(out)
}

/// Removes the per-backend counters of pairs the frontends no longer hold
/// (the programs create them; a departed backend's would stay forever).
pub fn prune_backends(dir: &Path, live: &BTreeSet<(u32, u32)>) -> Result<usize, MapsError> {
    let mut map: HashMap<MapData, BackendStatKey, u64> = pinned::open(dir, names::BACKEND_STATS)?;
    let limit = pinned::walk_limit(dir, names::BACKEND_STATS);
    let gone: Vec<BackendStatKey> = map
        .keys()
        .take(limit)
        .filter_map(Result::ok)
        .filter(|k| !live.contains(&(k.rev_nat_id, k.backend_id)))
        .collect();
    for k in &gone {
        pinned::remove(&mut map, k, names::BACKEND_STATS)?;
    }
    Ok(gone.len())
}

/// `namespace`, `service` and `port` of a Service port's series.
pub type PortLabels = [(&'static str, String); 3];

/// One counter index's series: (index, family, help, extra label).
type Series = (
    usize,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

/// `namespace/name:port` (the names map) split into its labels.
fn labels_of(name: &str) -> PortLabels {
    let (svc, port) = name.rsplit_once(':').unwrap_or((name, ""));
    let (ns, svc) = svc.split_once('/').unwrap_or(("", svc));
    [
        ("namespace", ns.to_string()),
        ("service", svc.to_string()),
        ("port", port.to_string()),
    ]
}

/// Everything one scrape reports, summed per Service port.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scrape {
    /// (labels, counter index) → value.
    pub services: BTreeMap<PortLabels, [u64; svc_stat::MAX]>,
    /// (labels, backend `ip:port`) → new connections.
    pub backends: BTreeMap<(PortLabels, String), u64>,
}

/// Sums the frontends' counters per Service port; at most `max_backends`
/// per-backend series (0: none).
pub fn scrape(
    names_by_id: &BTreeMap<u32, String>,
    stats: &BTreeMap<u16, ServiceStats>,
    pairs: &BTreeMap<BackendStatKey, u64>,
    backends: &BTreeMap<u32, BackendValue>,
    max_backends: usize,
) -> Scrape {
    let mut out = Scrape::default();
    for (id, s) in stats {
        let Some(name) = names_by_id.get(&u32::from(*id)) else {
            continue;
        };
        let sum = out.services.entry(labels_of(name)).or_default();
        for (total, n) in sum.iter_mut().zip(s.counts) {
            *total += n;
        }
    }
    for (k, n) in pairs {
        let (Some(name), Some(be)) = (names_by_id.get(&k.rev_nat_id), backends.get(&k.backend_id))
        else {
            continue;
        };
        let key = (labels_of(name), format!("{}:{}", be.ip(), be.port()));
        if out.backends.len() >= max_backends && !out.backends.contains_key(&key) {
            continue;
        }
        *out.backends.entry(key).or_default() += n;
    }
    out
}

/// Every metric family the collector exports (all counters; the series
/// get `_total`), for tests and the metrics reference.
pub const FAMILIES: [&str; 6] = [
    "bpfproxy_service_connections",
    "bpfproxy_service_refused",
    "bpfproxy_service_dropped",
    "bpfproxy_service_packets",
    "bpfproxy_service_bytes",
    BACKEND_FAMILY,
];

const BACKEND_FAMILY: &str = "bpfproxy_service_backend_connections";

/// The metrics of one counter index: (name, help, extra label).
const SERIES: [Series; 7] = [
    (svc_stat::SOCK_CONNECTIONS, "bpfproxy_service_connections", "New connections (and unconnected UDP datagrams) to the Service port, by datapath", Some(("datapath", "socket"))),
    (svc_stat::TC_FLOWS, "bpfproxy_service_connections", "", Some(("datapath", "tc"))),
    (svc_stat::REFUSED, "bpfproxy_service_refused", "Connections to the Service port refused at once for want of endpoints", None),
    (svc_stat::DROPPED_NO_ENDPOINTS, "bpfproxy_service_dropped", "Packets to the Service port dropped, by reason (no_local_endpoints: a Local policy without local endpoints; source_range: outside loadBalancerSourceRanges)", Some(("reason", "no_local_endpoints"))),
    (svc_stat::DROPPED_SOURCE_RANGE, "bpfproxy_service_dropped", "", Some(("reason", "source_range"))),
    (svc_stat::TC_PACKETS, "bpfproxy_service_packets", "Packets of the Service port's flows the TC ingress program translated", None),
    (svc_stat::TC_BYTES, "bpfproxy_service_bytes", "Bytes of those packets", None),
];

/// Reads the counters from the pins at each scrape.
#[derive(Debug)]
pub struct ServiceTraffic {
    pub pin_dir: PathBuf,
    /// Per-backend series at most (`--service-metrics-backends`).
    pub max_backends: usize,
}

impl ServiceTraffic {
    fn read_all(&self) -> Result<Scrape, MapsError> {
        let dir = &self.pin_dir;
        let names_map: HashMap<MapData, u32, proxy_common::ServiceName> =
            pinned::open(dir, names::SERVICE_NAMES)?;
        let names_by_id: BTreeMap<u32, String> = names_map
            .iter()
            .filter_map(Result::ok)
            .map(|(id, n)| (id, n.as_str().to_string()))
            .collect();
        let ids = names_by_id
            .keys()
            .filter_map(|id| u16::try_from(*id).ok())
            .collect();
        let stats = read(dir, &ids)?;
        let (pairs, backends) = if self.max_backends == 0 {
            Default::default()
        } else {
            (
                pinned::read_pinned_bounded(dir, names::BACKEND_STATS)?,
                pinned::read_pinned_bounded(dir, names::BACKENDS)?,
            )
        };
        Ok(scrape(
            &names_by_id,
            &stats,
            &pairs,
            &backends,
            self.max_backends,
        ))
    }
}

impl Collector for ServiceTraffic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A scrape while the pins are being re-created shows no series
        // rather than failing the whole /metrics page.
        let scrape = match self.read_all() {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "per-Service counters unreadable for this scrape");
                return Ok(());
            }
        };
        let mut done: Vec<&str> = Vec::new();
        for (_, name, help, _) in SERIES {
            if done.contains(&name) {
                continue;
            }
            done.push(name);
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (index, _, _, extra) in SERIES.iter().filter(|s| s.1 == name) {
                for (labels, counts) in &scrape.services {
                    let mut set: Vec<(&str, &str)> =
                        labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    set.extend(*extra);
                    ConstCounter::new(counts[*index]).encode(metric.encode_family(&set)?)?;
                }
            }
        }
        if scrape.backends.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            BACKEND_FAMILY,
            "New connections to the Service port by backend (socket and TC datapaths), for at most --service-metrics-backends backends",
            None,
            MetricType::Counter,
        )?;
        for ((labels, backend), n) in &scrape.backends {
            let mut set: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            set.push(("backend", backend));
            ConstCounter::new(*n).encode(metric.encode_family(&set)?)?;
        }
        Ok(())
    }
}
