//! Property: an incremental sync after any sequence of changes leaves
//! exactly the maps a full sync would.
//!
//! Random Services (ClusterIP, NodePort, LoadBalancer; externalIPs and
//! NodePorts drawn from small pools so that Services fight over
//! frontends; eTP=Local, affinity, source ranges) and EndpointSlices
//! (endpoints on this node or another, ready or terminating) change a few
//! at a time; unchanged objects keep their allocation, as the API-server
//! source's cache keeps them. After every step the maps of the syncer fed
//! the changes equal, ids aside, what a fresh syncer computes from
//! nothing; after the last, a full resync of the same syncer finds nothing
//! to write (its maps are the full sync's, id for id).
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proptest::prelude::*;
use proxy_agent::{
    datapath::MapState,
    maps::FakeMaps,
    metrics::Metrics,
    model::{ModelConfig, NodeContext, ServiceObject, SliceObject},
    source::Snapshot,
    sync::Syncer,
};
use serde_json::{json, Value};

const SERVICES: u8 = 6;

/// One Service's shape.
#[derive(Clone, Debug)]
struct Svc {
    kind: u8,
    cluster_ip: u8,
    udp_port: bool,
    node_port: u16,
    external_ip: Option<u8>,
    local: bool,
    affinity: bool,
    source_range: bool,
}

/// One endpoint: address, on this node, ready, terminating.
type Ep = (u8, bool, bool, bool);

#[derive(Clone, Debug)]
enum Change {
    Service(u8, Option<Svc>),
    Slice(u8, u8, Option<Vec<Ep>>),
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        0u8..3,
        1u8..=4,
        any::<bool>(),
        30001u16..=30003,
        proptest::option::of(1u8..=5),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                kind,
                cluster_ip,
                udp_port,
                node_port,
                external_ip,
                local,
                affinity,
                source_range,
            )| {
                Svc {
                    kind,
                    cluster_ip,
                    udp_port,
                    node_port,
                    external_ip,
                    local,
                    affinity,
                    source_range,
                }
            },
        )
}

fn endpoints() -> impl Strategy<Value = Vec<Ep>> {
    proptest::collection::vec((1u8..=6, any::<bool>(), any::<bool>(), any::<bool>()), 0..4)
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0..SERVICES, proptest::option::weighted(0.85, svc()))
            .prop_map(|(i, s)| Change::Service(i, s)),
        4 => (0..SERVICES, 0u8..2, proptest::option::weighted(0.85, endpoints()))
            .prop_map(|(i, k, e)| Change::Slice(i, k, e)),
    ]
}

/// Steps of one to three changes each.
fn steps() -> impl Strategy<Value = Vec<Vec<Change>>> {
    proptest::collection::vec(proptest::collection::vec(change(), 1..4), 1..14)
}

fn service_object(i: u8, s: &Svc) -> Service {
    let kind = ["ClusterIP", "NodePort", "LoadBalancer"][usize::from(s.kind)];
    let mut ports =
        vec![json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080})];
    if s.udp_port {
        ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}));
    }
    if s.kind > 0 {
        for (n, p) in ports.iter_mut().enumerate() {
            p["nodePort"] = json!(s.node_port + 10 * n as u16);
        }
    }
    let mut spec = json!({
        "type": kind,
        "clusterIP": format!("10.96.0.{}", s.cluster_ip),
        "ports": ports,
    });
    if let Some(e) = s.external_ip {
        spec["externalIPs"] = json!([format!("10.96.0.{e}")]);
    }
    if s.local && s.kind > 0 {
        spec["externalTrafficPolicy"] = json!("Local");
    }
    if s.affinity {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    if s.source_range {
        spec["loadBalancerSourceRanges"] = json!(["192.0.2.0/24"]);
    }
    let mut obj = json!({
        "metadata": {"name": format!("s{i}"), "namespace": "ns"},
        "spec": spec,
    });
    if s.kind == 2 {
        obj["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{}", i % 3)}]}});
    }
    from(obj)
}

fn slice_object(i: u8, k: u8, eps: &[Ep]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, here, ready, terminating)| {
            json!({
                "addresses": [format!("10.244.0.{ip}")],
                "nodeName": if *here { "node-a" } else { "node-b" },
                "conditions": {"ready": ready, "serving": true, "terminating": terminating},
            })
        })
        .collect();
    from(json!({
        "metadata": {
            "name": format!("s{i}-{k}"),
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": format!("s{i}")},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
        "endpoints": endpoints,
    }))
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// The objects, each kept in its allocation until it changes.
#[derive(Default)]
struct Cluster {
    services: BTreeMap<u8, Arc<ServiceObject>>,
    slices: BTreeMap<(u8, u8), Arc<SliceObject>>,
}

impl Cluster {
    fn apply(&mut self, c: &Change) {
        match c {
            Change::Service(i, Some(s)) => {
                self.services
                    .insert(*i, Arc::new(ServiceObject::new(&service_object(*i, s))));
            }
            Change::Service(i, None) => {
                self.services.remove(i);
            }
            Change::Slice(i, k, Some(eps)) => {
                self.slices.insert(
                    (*i, *k),
                    Arc::new(SliceObject::new(&slice_object(*i, *k, eps))),
                );
            }
            Change::Slice(i, k, None) => {
                self.slices.remove(&(*i, *k));
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.values().cloned().collect(),
            slices: self.slices.values().cloned().collect(),
            ..Snapshot::default()
        }
    }
}

fn syncer() -> Syncer<FakeMaps> {
    let config = ModelConfig {
        node: NodeContext {
            name: "node-a".into(),
            zone: None,
        },
        ..ModelConfig::default()
    };
    Syncer::new(FakeMaps::new(4096), Arc::new(Metrics::new()), config).expect("syncer")
}

/// The maps without ids: per master key, its value (the revNAT id
/// cleared), its name and revNAT entry, the backends of its slots in slot
/// order, its source ranges.
fn without_ids(s: &MapState) -> Vec<String> {
    s.masters()
        .map(|(k, v)| {
            let rev = u32::from(v.rev_nat_id);
            let slots: Vec<String> = (1..=v.count)
                .map(|i| {
                    let slot = s.services.get(&k.with_slot(i));
                    let be = slot.and_then(|sv| s.backends.get(&sv.backend_id));
                    format!("{be:?}")
                })
                .collect();
            let ranges: Vec<_> = s
                .source_ranges
                .iter()
                .filter(|r| r.rev_nat_id == rev)
                .map(|r| r.to_string())
                .collect();
            let master = proxy_common::ServiceValue {
                rev_nat_id: 0,
                ..*v
            };
            format!(
                "{k:?} {master:?} {:?} {:?} {slots:?} {ranges:?}",
                s.names.get(&rev),
                s.rev_nat.get(&rev)
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn incremental_syncs_leave_the_maps_a_full_sync_would(steps in steps()) {
        let mut cluster = Cluster::default();
        let mut live = syncer();
        live.sync(&cluster.snapshot(), false).expect("first sync");
        let mut incremental = 0;
        for step in &steps {
            for c in step {
                cluster.apply(c);
            }
            let snap = cluster.snapshot();
            let outcome = live.sync(&snap, false).expect("sync");
            prop_assert_eq!(outcome.failed, 0);
            incremental += usize::from(outcome.incremental);
            let after_change = live.maps().state.clone();

            let mut fresh = syncer();
            fresh.sync(&snap, false).expect("fresh sync");
            prop_assert_eq!(
                without_ids(&after_change),
                without_ids(&fresh.maps().state),
                "ids aside, what a syncer computes from nothing"
            );
            prop_assert_eq!(after_change.backends.len(), fresh.maps().state.backends.len());

        }
        let before = live.maps().state.clone();
        let resync = live.sync(&cluster.snapshot(), true).expect("full resync");
        prop_assert_eq!(resync.ops, 0, "a full resync finds nothing to write");
        prop_assert_eq!(&live.maps().state, &before);
        prop_assert!(incremental > 0, "some syncs were incremental");
    }
}
