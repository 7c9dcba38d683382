//! Maps smaller than the cluster (`--map-size-*`): the Services that fit
//! are served whole, the others are left out whole — logged and counted —
//! and a served Service is never pushed out by a new one.
mod common;

use std::sync::Arc;

use proxy_agent::{
    datapath::{check_invariant, DumpView},
    maps::FakeMaps,
    metrics::Metrics,
    model::{ModelConfig, ServiceObject, SliceObject},
    sync::Syncer,
};

/// Service `ns/sN` on `10.96.0.N:80` with `eps` endpoints.
fn service(n: u8, eps: u8) -> String {
    let addrs: Vec<String> = (1..=eps)
        .map(|e| format!("{{addresses: [10.0.{n}.{e}]}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{n}, namespace: ns}}\nspec: {{clusterIP: 10.96.0.{n}, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{n}-1, namespace: ns, labels: {{kubernetes.io/service-name: s{n}}}}}\naddressType: IPv4\nports: [{{port: 80}}]\nendpoints: [{}]\n",
        addrs.join(", ")
    )
}

fn services(list: &[(u8, u8)]) -> String {
    list.iter()
        .map(|(n, eps)| service(*n, *eps))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Room for `room` entries in every map: a Service of one port with 2
/// endpoints takes 3 in the frontend map (master + 2 slots).
fn syncer(room: u32) -> (Syncer<FakeMaps>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let s =
        Syncer::new(FakeMaps::new(room), metrics.clone(), ModelConfig::default()).expect("syncer");
    (s, metrics)
}

fn view(s: &Syncer<FakeMaps>) -> String {
    DumpView::from_state(&s.maps().state).to_string()
}

#[test]
fn services_that_fit_are_served_whole_and_the_rest_are_left_out_and_counted() {
    let (mut s, metrics) = syncer(10);
    let snap = common::snapshot(&services(&[(1, 2), (2, 2), (3, 2), (4, 2)]));
    let outcome = s.sync(&snap, true).expect("sync");
    assert_eq!(outcome.failed, 0, "nothing written half-way: {outcome:?}");
    assert_eq!(outcome.left_out, 1, "{outcome:?}");
    assert!(outcome.healthy(), "room is reported by metrics");
    check_invariant(&s.maps().state).expect("invariant");
    let v = view(&s);
    for n in 1..=3 {
        assert!(
            v.contains(&format!("ns/s{n} 10.96.0.{n}:80/TCP -> 2 backends")),
            "s{n} served whole: {v}"
        );
    }
    assert!(!v.contains("10.96.0.4"), "s4 left out whole: {v}");
    let text = metrics.encode();
    assert!(
        text.contains(r#"bpfproxy_skipped_objects_total{kind="Service",reason="map_full"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"bpfproxy_map_capacity_entries{map="bpfp_svc_v1"} 10"#),
        "capacity from the maps, not the constants: {text}"
    );
    // Re-syncing the same objects writes nothing and counts nothing again.
    let again = s.sync(&snap, true).expect("sync");
    assert_eq!((again.ops, again.failed), (0, 0), "{again:?}");
    assert!(metrics
        .encode()
        .contains(r#"bpfproxy_skipped_objects_total{kind="Service",reason="map_full"} 1"#));
}

#[test]
fn a_served_service_is_never_pushed_out_and_one_that_grows_past_the_room_keeps_its_backends() {
    let (mut s, _) = syncer(8);
    // s2 sorts after s1 by name but is served first: it must stay.
    s.sync(&common::snapshot(&services(&[(2, 2), (3, 2)])), true)
        .expect("sync");
    let outcome = s
        .sync(
            &common::snapshot(&services(&[(1, 2), (2, 2), (3, 2)])),
            true,
        )
        .expect("sync");
    assert_eq!((outcome.failed, outcome.left_out), (0, 1), "{outcome:?}");
    let v = view(&s);
    assert!(v.contains("ns/s2 10.96.0.2:80/TCP -> 2 backends"), "{v}");
    assert!(v.contains("ns/s3 10.96.0.3:80/TCP -> 2 backends"), "{v}");
    assert!(!v.contains("10.96.0.1:"), "the new one waits: {v}");

    // s3 scales to 5 endpoints: 3 more slots while its 2 are in use, 9 > 8.
    // It keeps its 2.
    let outcome = s
        .sync(&common::snapshot(&services(&[(2, 2), (3, 5)])), true)
        .expect("sync");
    assert_eq!((outcome.failed, outcome.left_out), (0, 1), "{outcome:?}");
    check_invariant(&s.maps().state).expect("invariant");
    let v = view(&s);
    assert!(v.contains("ns/s3 10.96.0.3:80/TCP -> 2 backends"), "{v}");
    assert!(v.contains("ns/s2 10.96.0.2:80/TCP -> 2 backends"), "{v}");
}

#[test]
fn a_new_service_that_fits_once_a_deleted_one_is_gone_is_programmed_by_the_retry() {
    let (mut s, _) = syncer(10);
    s.sync(
        &common::snapshot(&services(&[(1, 2), (2, 2), (3, 2)])),
        true,
    )
    .expect("sync");
    // s1 goes and s4 comes at once: s4's entries would have to be written
    // before s1's are deleted (make-before-break), and there is no room
    // for both.
    let snap = common::snapshot(&services(&[(2, 2), (3, 2), (4, 2)]));
    let first = s.sync(&snap, false).expect("sync");
    assert_eq!(first.failed, 0, "{first:?}");
    assert!(
        first.retry_for_room && !first.complete(),
        "retried: {first:?}"
    );
    let second = s.sync(&snap, false).expect("sync");
    assert!(second.complete() && second.left_out == 0, "{second:?}");
    let v = view(&s);
    assert!(v.contains("ns/s4 10.96.0.4:80/TCP -> 2 backends"), "{v}");
    assert!(!v.contains("10.96.0.1:"), "{v}");
    check_invariant(&s.maps().state).expect("invariant");
}

/// The flags the README gives for 50k Services and 250k endpoints.
const LARGE_SERVICES: u32 = 393_216;
const LARGE_BACKENDS: u32 = 262_144;

/// kubernetes#135639's scale: 50k Services with 5 endpoints each (250k
/// endpoints), a NodePort on every fifth, fit in maps sized with the flags
/// the README documents (`--map-size-services 393216
/// --map-size-backends 262144`), nothing left out; a change to one of them
/// afterwards is written alone.
#[test]
fn fifty_thousand_services_with_a_quarter_million_endpoints_fit_the_documented_sizes() {
    use serde_json::json;
    let n = 50_000u32;
    let ip = |i: u32, net: u32| format!("10.{}.{}.{}", net + i / 65_536, (i / 256) % 256, i % 256);
    let mut snap = proxy_agent::source::Snapshot::default();
    for i in 0..n {
        let mut port = json!({"port": 80, "targetPort": 8080});
        let mut kind = "ClusterIP";
        if i % 5 == 0 {
            // 10k NodePorts take a wider --service-node-port-range.
            port["nodePort"] = json!(20_000 + i / 5);
            kind = "NodePort";
        }
        let svc = json!({
            "metadata": {"name": format!("s{i}"), "namespace": "ns"},
            "spec": {"type": kind, "clusterIP": ip(i, 96), "ports": [port]},
        });
        let eps: Vec<_> = (0..5)
            .map(|e| json!({"addresses": [ip(i * 5 + e, 128)]}))
            .collect();
        let slice = json!({
            "metadata": {"name": format!("s{i}-1"), "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": eps,
        });
        snap.services.push(Arc::new(ServiceObject::new(
            &serde_json::from_value(svc).expect("service"),
        )));
        snap.slices.push(Arc::new(SliceObject::new(
            &serde_json::from_value(slice).expect("slice"),
        )));
    }
    let mut maps = FakeMaps::new(LARGE_SERVICES);
    maps.backend_capacity = LARGE_BACKENDS;
    let mut s =
        Syncer::new(maps, Arc::new(Metrics::new()), ModelConfig::default()).expect("syncer");
    let out = s.sync(&snap, true).expect("sync");
    assert!(out.complete() && out.left_out == 0, "{out:?}");
    let state = &s.maps().state;
    let frontends = state.masters().count();
    assert_eq!(frontends, 60_000, "one per ClusterIP and per NodePort");
    assert_eq!(state.backends.len(), 250_000);
    assert!(state.services.len() <= LARGE_SERVICES as usize);

    // One endpoint of one Service changes: written alone.
    let slice = json!({
        "metadata": {"name": "s7-1", "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": "s7"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": [{"addresses": ["10.200.0.1"]}],
    });
    snap.slices[7] = Arc::new(SliceObject::new(
        &serde_json::from_value(slice).expect("slice"),
    ));
    let out = s.sync(&snap, false).expect("sync");
    assert!(out.incremental && out.complete(), "{out:?}");
    // One backend in, five out, the master's count and the slots.
    assert!(out.ops <= 12, "{out:?}");
}
