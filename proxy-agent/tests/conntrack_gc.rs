//! The agent's conntrack cleanup through a real sync and the sweeper that
//! runs beside it: UDP flows to a backend that left its Service are purged
//! on the first pass after the sync (the stale-DNS problem), TCP flows keep
//! their backend, and nothing is purged before the first sync.
mod common;

use std::sync::Arc;

use std::collections::BTreeMap;

use proxy_agent::{
    ct_sweeper,
    datapath::ct_gc::{monotonic_now_s, CtTimeouts},
    maps::FakeMaps,
    metrics::Metrics,
    model::ModelConfig,
    sync::Syncer,
};
use proxy_common::{ct_state, proto, CtKey, CtValue};

fn dns(endpoints: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: kube-system}}\nspec: {{clusterIP: 10.96.0.10, ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: tcp, port: 53, protocol: TCP}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dns-1, namespace: kube-system, labels: {{kubernetes.io/service-name: dns}}}}\naddressType: IPv4\nports: [{{name: dns, port: 53, protocol: UDP}}, {{name: tcp, port: 53, protocol: TCP}}]\nendpoints: {endpoints}\n")
}

fn flow(p: u8, sport: u16, rev_nat_id: u16, backend_id: u32) -> (CtKey, CtValue) {
    (
        CtKey {
            saddr_be: 1,
            daddr_be: 2,
            sport_be: sport,
            dport_be: 53,
            proto: p,
            dir: 0,
            _pad: 0,
        },
        CtValue {
            addr_be: 0,
            port_be: 0,
            flags: 0,
            tcp_state: ct_state::ESTABLISHED,
            nat_addr_be: 0,
            nat_port_be: 0,
            rev_nat_id,
            backend_id,
            last_seen_s: monotonic_now_s(),
        },
    )
}

#[test]
fn udp_flows_to_a_removed_backend_are_purged_on_the_pass_after_the_sync() {
    let mut s = Syncer::new(
        FakeMaps::new(1024),
        Arc::new(Metrics::new()),
        ModelConfig::default(),
    )
    .expect("syncer");
    let mut live = s.live_pairs();
    assert!(live.borrow().is_none(), "no pairs before the first sync");
    let two = "[{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]";
    s.sync(&common::snapshot(&dns(two)), false).expect("sync");
    // (revNAT id, backend id, proto) of each slot, from what was written.
    let slots: Vec<(u16, u32, u8)> = s
        .maps()
        .state
        .services
        .iter()
        .filter(|(k, _)| k.slot > 0)
        .map(|(k, v)| (v.rev_nat_id, v.backend_id, k.proto))
        .collect();
    let backend_ip = |id: u32| s.maps().state.backends[&id].ip().to_string();
    let mut flows = Vec::new();
    for (i, (rev, be, p)) in slots.iter().enumerate() {
        flows.push((flow(*p, 1000 + i as u16, *rev, *be), backend_ip(*be)));
    }
    let mut table: BTreeMap<_, _> = flows.iter().map(|(kv, _)| *kv).collect();
    let sweep = |table: &mut BTreeMap<_, _>, live: &ct_sweeper::Live| {
        ct_sweeper::pass(
            table,
            &live.pairs,
            monotonic_now_s(),
            &CtTimeouts::default(),
        )
        .expect("pass")
    };
    let pairs = live
        .borrow_and_update()
        .clone()
        .expect("pairs after a sync");
    assert!(sweep(&mut table, &pairs).is_empty(), "every flow is live");
    // 10.0.0.2 leaves: the sync says so, the next pass purges.
    s.sync(&common::snapshot(&dns("[{addresses: [10.0.0.1]}]")), false)
        .expect("sync");
    assert!(
        live.has_changed().expect("sender alive"),
        "the pairs changed"
    );
    let pairs = live.borrow_and_update().clone().expect("pairs");
    let purged = sweep(&mut table, &pairs);
    assert_eq!(purged.values().sum::<usize>(), 1, "{purged:?}");
    for ((k, _), ip) in &flows {
        let kept = table.contains_key(k);
        let want = !(k.proto == proto::UDP && ip == "10.0.0.2");
        assert_eq!(kept, want, "{} flow to {ip}", k.proto);
    }
}
