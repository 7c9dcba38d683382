//! The sync loop's contract with the maps: change-driven syncs trust the
//! last complete write, full resyncs re-read the maps and repair drift, and
//! a failed write makes the next sync re-read.
mod common;

use std::sync::Arc;

use proxy_agent::{
    datapath::Op,
    drift,
    maps::{FakeMaps, FaultyMaps, LbMaps},
    metrics::Metrics,
    model::ModelConfig,
    node_addrs::{self, NodeAddrOp},
    sync::Syncer,
};

const YAML: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{port: 80}]\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]\n";

/// A syncer over fake maps with room for 1024 entries each.
fn fake_syncer() -> Syncer<FakeMaps> {
    Syncer::new(
        FakeMaps::new(1024),
        Arc::new(Metrics::new()),
        ModelConfig::default(),
    )
    .expect("syncer")
}

#[test]
fn a_full_resync_repairs_drift_that_change_driven_syncs_do_not_read() {
    let snap = common::snapshot(YAML);
    let mut s = fake_syncer();
    assert!(s.sync(&snap, false).expect("sync").ops > 0);
    let good = s.maps().state.clone();
    // Someone deletes a backend behind our back.
    let id = *good.backends.keys().next().expect("a backend");
    s.maps_mut().state.backends.remove(&id);
    assert_eq!(
        s.sync(&snap, false).expect("sync").ops,
        0,
        "no change: maps not read"
    );
    let repaired = s.sync(&snap, true).expect("sync");
    assert_eq!(
        repaired.ops, 1,
        "the resync rewrites exactly the lost entry"
    );
    assert_eq!(s.maps().state, good);
}

#[test]
fn after_a_failed_write_the_next_sync_reads_the_maps_again() {
    let snap = common::snapshot(YAML);
    let mut fail_first_backend = true;
    let maps = FaultyMaps::new(FakeMaps::new(1024), move |_, op: &Op| {
        let fail = fail_first_backend && matches!(op, Op::UpsertBackend(..));
        if fail {
            fail_first_backend = false;
        }
        fail
    });
    let mut s =
        Syncer::new(maps, Arc::new(Metrics::new()), ModelConfig::default()).expect("syncer");
    let first = s.sync(&snap, false).expect("sync");
    assert_eq!(first.failed, 1);
    let second = s.sync(&snap, false).expect("sync");
    assert!(second.complete() && second.ops > 0, "{second:?}");
    proxy_agent::datapath::check_invariant(&s.maps().inner.state).expect("invariant");
    assert_eq!(s.maps().inner.state.masters().count(), 1);
}

#[test]
fn a_full_map_leaves_the_proxy_healthy_and_any_other_failure_does_not() {
    let snap = common::snapshot(YAML);
    // Room for less than the Service needs: a persistent overflow.
    let mut s = Syncer::new(
        FakeMaps::new(2),
        Arc::new(Metrics::new()),
        ModelConfig::default(),
    )
    .expect("syncer");
    for _ in 0..3 {
        let outcome = s.sync(&snap, true).expect("sync");
        // The planner knows the room: the Service is left out whole
        // instead of written half-way.
        assert!(outcome.failed == 0 && outcome.left_out == 1, "{outcome:?}");
        assert!(
            outcome.complete(),
            "nothing to wait for: no retry every second"
        );
        assert!(
            outcome.healthy(),
            "capacity is reported by metrics, not by /healthz"
        );
    }
    let maps = FaultyMaps::new(FakeMaps::new(1024), |_, op: &Op| {
        matches!(op, Op::UpsertBackend(..))
    });
    let mut s =
        Syncer::new(maps, Arc::new(Metrics::new()), ModelConfig::default()).expect("syncer");
    let outcome = s.sync(&snap, true).expect("sync");
    assert!(outcome.failed > 0 && outcome.full == 0, "{outcome:?}");
    assert!(!outcome.healthy(), "a write error is a real failure");
}

/// `dump --check` finds exactly the entry someone changed behind the
/// agent's back, names it, and finds nothing once a resync repaired it;
/// the node-address map the same.
#[test]
fn the_drift_check_names_a_corrupted_entry_and_is_clean_after_the_repair() {
    let snap = common::snapshot(YAML);
    let addrs = node_addrs::entries(&["192.0.2.10".parse().expect("ip")]);
    let check = |s: &Syncer<FakeMaps>| {
        drift::check(&snap, ModelConfig::default(), &addrs, s.maps()).expect("check")
    };
    let mut s = fake_syncer();
    s.sync(&snap, false).expect("sync");
    s.sync_node_addrs(&addrs, false).expect("node sync");
    let clean = check(&s);
    assert!(clean.is_empty(), "{clean:?}");
    let (id, be) = s
        .maps()
        .state
        .backends
        .iter()
        .next()
        .map(|(k, v)| (*k, *v))
        .expect("a backend");
    let mut bad = be;
    bad.port_be = 9999u16.to_be();
    s.maps_mut().state.backends.insert(id, bad);
    // And a node address the node does not have.
    let stray = node_addrs::entries(&["198.51.100.7".parse().expect("ip")]);
    for (k, v) in &stray {
        s.maps_mut()
            .apply_node_addr(&NodeAddrOp::Upsert(*k, *v))
            .expect("write");
    }
    let found = check(&s);
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|t| t.contains(&format!("{}:9999", be.ip()))
            && t.contains(&format!("{}:{}", be.ip(), be.port()))),
        "the corrupted backend is named with both values: {text:#?}"
    );
    assert!(
        text.iter().any(|t| t
            .contains("198.51.100.7: maps hold SNAT to 198.51.100.7, NodePorts, desired nothing")),
        "the stray node address is named: {text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t
                .contains("0.0.0.0: maps hold SNAT to 198.51.100.7, desired SNAT to 192.0.2.10")),
        "the overwritten SNAT address is named: {text:#?}"
    );
    s.sync(&snap, true).expect("resync");
    s.sync_node_addrs(&addrs, true).expect("node resync");
    let repaired = check(&s);
    assert!(repaired.is_empty(), "{repaired:?}");
}

/// The network programming latency is observed once per new trigger time:
/// once by the incremental sync that writes the change, not again by the
/// full resync after it.
#[test]
fn a_trigger_time_is_observed_once_whichever_sync_writes_it() {
    let trigger = "endpoints.kubernetes.io/last-change-trigger-time";
    let with_trigger = |t: &str| {
        YAML.replace(
            "labels: {kubernetes.io/service-name: s}}",
            &format!(
                "labels: {{kubernetes.io/service-name: s}}, annotations: {{{trigger}: '{t}'}}}}"
            ),
        )
    };
    let metrics = Arc::new(Metrics::new());
    let mut s =
        Syncer::new(FakeMaps::new(1024), metrics.clone(), ModelConfig::default()).expect("syncer");
    let count = |m: &Metrics| {
        m.encode()
            .lines()
            .find(|l| l.starts_with("kubeproxy_network_programming_duration_seconds_count"))
            .and_then(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let first = common::snapshot(&with_trigger("2026-01-01T00:00:00Z"));
    s.sync(&first, true).expect("sync");
    assert_eq!(count(&metrics), 1);
    // The slice changes (same Service object, new slice object).
    let mut second = first.clone();
    second.slices = common::snapshot(&with_trigger("2026-01-01T00:00:01Z")).slices;
    let out = s.sync(&second, false).expect("sync");
    assert!(out.incremental, "{out:?}");
    assert_eq!(count(&metrics), 2, "the change's trigger time");
    s.sync(&second, true).expect("full resync");
    assert_eq!(count(&metrics), 2, "not observed again by the full resync");
}
