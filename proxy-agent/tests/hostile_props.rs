//! Property tests of the whole pipeline (manifest parsing → model → render
//! → plan → apply) against hostile Services and EndpointSlices: huge port
//! lists, invalid and foreign-family addresses, unknown protocols, empty
//! names, duplicated ports and names, bogus types and policies.
//!
//! Whatever comes in: no panic, the maps keep their invariant, and a sync
//! of valid objects afterwards converges to what a fresh agent would write
//! from those objects alone (no wedged or leaked state). Map ids depend on
//! history, so the comparison is of what the ids point at.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use proptest::prelude::*;
use proxy_agent::{
    datapath::{check_invariant, MapState},
    maps::FakeMaps,
    metrics::Metrics,
    model::ModelConfig,
    sync::Syncer,
};
use serde_json::{json, Value};

/// Map room: enough for the valid objects, too little for the biggest
/// hostile ones (so the fitting paths run too).
const CAPACITY: u32 = 4096;

/// Names shared by hostile and valid objects, so valid ones replace
/// hostile ones of the same name.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["web", "dns", "api"]).prop_map(str::to_string),
        1 => Just(String::new()),
        1 => Just("Not_A-Valid.Name!".to_string()),
        1 => Just("x".repeat(300)),
    ]
}

fn ip() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u8..4, 1u8..6).prop_map(|(a, b)| format!("10.96.{a}.{b}")),
        4 => (1u8..4, 2u8..8).prop_map(|(a, b)| format!("10.244.{a}.{b}")),
        1 => Just("None".to_string()),
        1 => Just("10.96.999.1".to_string()),
        1 => Just("not-an-ip".to_string()),
        1 => Just(String::new()),
        1 => Just("fd00::1".to_string()),
        1 => Just("0.0.0.0".to_string()),
        1 => Just("255.255.255.255".to_string()),
        1 => Just("127.0.0.1".to_string()),
        1 => Just("224.0.0.1".to_string()),
    ]
}

fn protocol() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(json!("TCP")),
        3 => Just(json!("UDP")),
        1 => Just(json!("SCTP")),
        1 => Just(json!("QUIC")),
        1 => Just(json!("")),
        1 => Just(json!(17)),
    ]
}

fn port_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::sample::select(vec![53i64, 80, 443, 8080]).prop_map(|p| json!(p)),
        1 => Just(json!(0)),
        1 => Just(json!(65535)),
        1 => Just(json!(70000)),
        1 => Just(json!(-1)),
        1 => Just(json!("eighty")),
    ]
}

fn port_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec!["http", "dns", "a"]).prop_map(|n| json!(n)),
        1 => Just(json!("")),
        1 => Just(Value::Null),
    ]
}

/// Port lists: usually a few (with duplicates), sometimes hundreds.
fn ports<S: Strategy<Value = Value>>(port: fn() -> S) -> impl Strategy<Value = Vec<Value>> {
    prop_oneof![
        8 => prop::collection::vec(port(), 0..5),
        1 => prop::collection::vec(port(), 200..400),
    ]
}

fn service_port() -> impl Strategy<Value = Value> {
    (
        port_name(),
        port_number(),
        protocol(),
        port_number(),
        29990u16..30010,
    )
        .prop_map(|(name, port, protocol, target, node_port)| {
            json!({"name": name, "port": port, "protocol": protocol,
                   "targetPort": target, "nodePort": node_port})
        })
}

fn hostile_service() -> impl Strategy<Value = Value> {
    let kind = prop::sample::select(vec!["ClusterIP", "NodePort", "LoadBalancer", "Bogus", ""]);
    let policy = prop::sample::select(vec!["Cluster", "Local", "Sideways"]);
    (
        (name(), name(), kind, ip(), ports(service_port)),
        (
            prop::collection::vec(ip(), 0..3),
            policy,
            prop::collection::vec(
                prop::sample::select(vec!["10.0.0.0/8", "1.2.3.4/40", "junk", ""]),
                0..3,
            ),
            prop::option::of(-5i64..100_000),
        ),
    )
        .prop_map(
            |((name, ns, kind, ip, ports), (ext, policy, ranges, aff))| {
                let mut spec = json!({"type": kind, "clusterIP": ip, "ports": ports,
                "externalIPs": ext, "externalTrafficPolicy": policy,
                "loadBalancerSourceRanges": ranges});
                if let Some(t) = aff {
                    spec["sessionAffinity"] = json!("ClientIP");
                    spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
                }
                json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": name, "namespace": ns}, "spec": spec})
            },
        )
}

fn slice_port() -> impl Strategy<Value = Value> {
    (port_name(), port_number(), protocol()).prop_map(
        |(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}),
    )
}

fn endpoint() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            8 => prop::collection::vec(ip(), 0..3),
            1 => prop::collection::vec(ip(), 300..500),
        ],
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::sample::select(vec!["node-1", "", "node-2"]),
    )
        .prop_map(|(addresses, ready, terminating, node)| {
            json!({"addresses": addresses, "nodeName": node,
                   "conditions": {"ready": ready, "serving": ready, "terminating": terminating}})
        })
}

fn hostile_slice() -> impl Strategy<Value = Value> {
    let family = prop::sample::select(vec!["IPv4", "IPv4", "IPv6", "FQDN", "junk"]);
    (
        name(),
        name(),
        prop::option::of(name()),
        family,
        ports(slice_port),
        prop::collection::vec(endpoint(), 0..4),
    )
        .prop_map(|(name, ns, service, family, ports, endpoints)| {
            let mut labels = json!({});
            if let Some(s) = service {
                labels["kubernetes.io/service-name"] = json!(s);
            }
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": name, "namespace": ns, "labels": labels},
                   "addressType": family, "ports": ports, "endpoints": endpoints})
        })
}

/// Hostile documents, with now and then one that is not even an object
/// of a known kind.
fn hostile() -> impl Strategy<Value = Vec<Value>> {
    let doc = prop_oneof![
        5 => hostile_service(),
        5 => hostile_slice(),
        1 => Just(json!({"apiVersion": "v1", "kind": "Service", "spec": "not a map"})),
        1 => Just(json!([1, 2, 3])),
        1 => Just(json!({"apiVersion": "v1", "kind": "ConfigMap"})),
    ];
    prop::collection::vec(doc, 0..8)
}

/// Valid objects over the same names: Services with unique ClusterIPs and
/// a slice each.
fn valid() -> impl Strategy<Value = Vec<Value>> {
    let svc = (
        prop::sample::select(vec!["ClusterIP", "NodePort"]),
        prop::collection::btree_set(1u8..6, 1..4),
        prop::collection::btree_set(2u8..9, 0..4),
    );
    prop::collection::btree_map(prop::sample::select(vec!["web", "dns", "api"]), svc, 0..3)
        .prop_map(|m| {
            let mut docs = Vec::new();
            for (i, (name, (kind, ports, eps))) in m.into_iter().enumerate() {
                let ports: Vec<Value> = ports
                    .iter()
                    .map(|p| json!({"name": format!("p{p}"), "port": 80 + u16::from(*p),
                        "targetPort": 8000 + u16::from(*p), "protocol": "TCP",
                        "nodePort": 30000 + 10 * i as u16 + u16::from(*p)}))
                    .collect();
                let slice_ports: Vec<Value> = ports
                    .iter()
                    .map(|p| json!({"name": p["name"], "port": p["targetPort"], "protocol": "TCP"}))
                    .collect();
                let endpoints: Vec<Value> = eps
                    .iter()
                    .map(|e| json!({"addresses": [format!("10.244.1.{e}")], "nodeName": "node-1"}))
                    .collect();
                docs.push(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"type": kind, "clusterIP": format!("10.96.0.{}", i + 1), "ports": ports}}));
                docs.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-1"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4", "ports": slice_ports, "endpoints": endpoints}));
            }
            docs
        })
}

/// Documents as one multi-document manifest (JSON is YAML).
fn manifest(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("{d}\n"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn syncer() -> Syncer<FakeMaps> {
    Syncer::new(
        FakeMaps::new(CAPACITY),
        Arc::new(Metrics::new()),
        ModelConfig::default(),
    )
    .expect("syncer")
}

/// What the maps say with the ids resolved: per frontend key (slot 0) its
/// master value without the id, its name, revNAT target, backends and
/// source ranges; and how many entries each map holds (leaks show there).
type Canonical = (
    BTreeMap<
        String,
        (
            String,
            Option<String>,
            String,
            BTreeSet<String>,
            BTreeSet<String>,
        ),
    >,
    [usize; 5],
);

fn canonical(s: &MapState) -> Canonical {
    let mut out = BTreeMap::new();
    for (key, master) in s.services.iter().filter(|(k, _)| k.slot == 0) {
        let rev = u32::from(master.rev_nat_id);
        let backends = (1..=master.count)
            .filter_map(|slot| s.services.get(&key.with_slot(slot)))
            .map(|v| format!("{:?}", s.backends.get(&v.backend_id)))
            .collect();
        let ranges = s
            .source_ranges
            .iter()
            .filter(|r| r.rev_nat_id == rev)
            .map(|r| format!("{}/{}", r.net, r.len))
            .collect();
        let master_fields = format!(
            "count {} flags {} affinity {}",
            master.count, master.flags, master.affinity_timeout_s
        );
        out.insert(
            format!("{key:?}"),
            (
                master_fields,
                s.names.get(&rev).cloned(),
                format!("{:?}", s.rev_nat.get(&rev)),
                backends,
                ranges,
            ),
        );
    }
    let counts = [
        s.services.len(),
        s.backends.len(),
        s.rev_nat.len(),
        s.names.len(),
        s.source_ranges.len(),
    ];
    (out, counts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn hostile_objects_never_wedge_the_pipeline(hostile in hostile(), valid in valid()) {
        let mut agent = syncer();
        // Whatever the hostile objects are: no panic, and the maps keep
        // their invariant (a failed write is allowed, a broken map not).
        let _ = agent.sync(&common::snapshot(&manifest(&hostile)), false);
        prop_assert!(check_invariant(&agent.maps().state).is_ok());
        // Hostile and valid together (the valid ones win their names).
        let mixed = [hostile.clone(), valid.clone()].concat();
        let _ = agent.sync(&common::snapshot(&manifest(&mixed)), false);
        prop_assert!(check_invariant(&agent.maps().state).is_ok());
        // Then the valid ones alone: exactly what a fresh agent writes.
        let snap = common::snapshot(&manifest(&valid));
        let outcome = agent.sync(&snap, false).expect("valid sync");
        prop_assert_eq!(outcome.failed, 0);
        let mut fresh = syncer();
        fresh.sync(&snap, false).expect("fresh sync");
        // The valid objects do program something (or the test proves
        // nothing): every Service has a ClusterIP frontend.
        prop_assert_eq!(
            fresh.maps().state.rev_nat.is_empty(),
            valid.is_empty(),
            "valid objects, nothing programmed"
        );
        prop_assert_eq!(canonical(&agent.maps().state), canonical(&fresh.maps().state));
        // And nothing more to do.
        prop_assert_eq!(agent.sync(&snap, true).expect("resync").ops, 0);
    }
}
