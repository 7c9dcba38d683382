//! Property tests of plan/apply: whatever the change, and even when writes
//! fail, the kernel-visible invariant holds after every single op.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use proptest::prelude::*;
use proxy_agent::{
    datapath::{apply, check_invariant, plan, render, Ids, MapState, Op},
    maps::{FakeMaps, FaultyMaps, LbMaps, MapsError},
    model::{
        DesiredState, Endpoint, Frontend, FrontendKind, FrontendState, Protocol, ServicePortName,
    },
    node_addrs::{NodeAddrEntries, NodeAddrOp},
};

/// Fake maps that check the invariant after every write.
struct Checking<M: LbMaps> {
    inner: M,
    violations: Vec<String>,
}

impl<M: LbMaps> LbMaps for Checking<M> {
    fn read_all(&self) -> Result<MapState, MapsError> {
        self.inner.read_all()
    }
    fn apply(&mut self, op: &Op) -> Result<(), MapsError> {
        let r = self.inner.apply(op);
        if let Err(v) = check_invariant(&self.inner.read_all()?) {
            self.violations.push(format!("after {op:?}: {v}"));
        }
        r
    }
    fn read_node_addrs(&self) -> Result<NodeAddrEntries, MapsError> {
        self.inner.read_node_addrs()
    }
    fn apply_node_addr(&mut self, op: &NodeAddrOp) -> Result<(), MapsError> {
        self.inner.apply_node_addr(op)
    }
}

/// Small universes so that states overlap and ids get reused.
fn desired_state() -> impl Strategy<Value = DesiredState> {
    let frontend = (
        0u8..4,
        prop_oneof![Just(80u16), Just(53)],
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
    )
        .prop_map(|(ip, port, protocol)| Frontend {
            ip: Ipv4Addr::new(10, 96, 0, ip).into(),
            port,
            protocol,
        });
    let endpoints = || {
        proptest::collection::btree_set(
            (0u8..6, prop_oneof![Just(8080u16), Just(53)]).prop_map(|(ip, port)| Endpoint {
                ip: Ipv4Addr::new(10, 244, 0, ip).into(),
                port,
            }),
            0..5,
        )
    };
    // Some frontends are eTP=Local external ones with a second view (the
    // in-cluster endpoint set, scope 1) to program beside the node's.
    // LoadBalancer ones may restrict their sources (loadBalancerSourceRanges).
    let ranges = proptest::collection::vec((1u8..=4, 8u8..=32), 0..3);
    let views = (endpoints(), proptest::option::of(endpoints()), ranges);
    proptest::collection::btree_map(frontend, views, 0..6).prop_map(|m| DesiredState {
        frontends: m
            .into_iter()
            .map(|(fe, (endpoints, in_cluster, ranges))| {
                let name = ServicePortName {
                    namespace: "ns".into(),
                    name: format!("svc-{}", fe.ip).into(),
                    port: fe.port.to_string(),
                };
                let kind = match in_cluster {
                    Some(_) => FrontendKind::LoadBalancer,
                    None => FrontendKind::ClusterIp,
                };
                (
                    fe,
                    FrontendState {
                        name,
                        kind,
                        endpoints: endpoints.into(),
                        affinity_timeout_s: 0,
                        policy_local: in_cluster.is_some(),
                        node_local: BTreeSet::new(),
                        any_endpoints: true,
                        source_ranges: match kind {
                            FrontendKind::LoadBalancer => ranges
                                .iter()
                                .map(|(octet, len)| {
                                    format!("10.{octet}.0.0/{len}").parse().unwrap()
                                })
                                .collect(),
                            _ => Vec::new(),
                        },
                        in_cluster: in_cluster.map(Into::into),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    })
}

/// Programs `a` into fresh fake maps, returning the maps and the ids.
fn programmed(a: &DesiredState) -> (FakeMaps, Ids) {
    let mut ids = Ids::default();
    let mut maps = FakeMaps::new(1024);
    let desired = render(a, &mut ids).state;
    let report = apply(&plan(&desired, &maps.state), &mut maps);
    assert!(report.ok());
    (maps, ids)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_op_of_a_plan_keeps_the_invariant_and_the_end_is_the_desired_state(
        a in desired_state(), b in desired_state()
    ) {
        let (maps, mut ids) = programmed(&a);
        let target = render(&b, &mut ids).state;
        let ops = plan(&target, &maps.state);
        let mut checking = Checking { inner: maps, violations: vec![] };
        let report = apply(&ops, &mut checking);
        prop_assert!(report.ok());
        prop_assert!(checking.violations.is_empty(), "{:?}", checking.violations);
        prop_assert_eq!(&checking.inner.state, &target);
    }

    #[test]
    fn planning_a_state_against_itself_is_empty(a in desired_state()) {
        let (maps, mut ids) = programmed(&a);
        let again = render(&a, &mut ids).state;
        prop_assert_eq!(&again, &maps.state, "ids are stable across renders");
        prop_assert!(plan(&again, &maps.state).is_empty());
    }

    #[test]
    fn applying_a_plan_twice_equals_applying_it_once(a in desired_state(), b in desired_state()) {
        let (mut maps, mut ids) = programmed(&a);
        let target = render(&b, &mut ids).state;
        let ops = plan(&target, &maps.state);
        apply(&ops, &mut maps);
        let once = maps.state.clone();
        let report = apply(&ops, &mut maps);
        prop_assert!(report.ok(), "deleting missing keys is success");
        prop_assert_eq!(&maps.state, &once);
    }

    #[test]
    fn failed_writes_never_break_the_invariant_and_a_later_sync_converges(
        a in desired_state(), b in desired_state(), fail_mask in any::<u64>()
    ) {
        let (maps, mut ids) = programmed(&a);
        let target = render(&b, &mut ids).state;
        let ops = plan(&target, &maps.state);
        // Fail the ops whose index bit is set in the mask.
        let faulty = FaultyMaps::new(maps, move |i, _| i < 64 && fail_mask & (1 << i) != 0);
        let mut checking = Checking { inner: faulty, violations: vec![] };
        apply(&ops, &mut checking);
        prop_assert!(checking.violations.is_empty(), "{:?}", checking.violations);
        // The next sync, without faults, reaches the target.
        let mut healed = checking.inner.inner;
        let retry = plan(&target, &healed.state);
        let report = apply(&retry, &mut healed);
        prop_assert!(report.ok());
        prop_assert_eq!(&healed.state, &target);
    }
}

#[test]
fn a_full_backend_map_holds_back_only_the_frontends_that_need_new_backends() {
    let fe = |ip: u8| Frontend {
        ip: Ipv4Addr::new(10, 96, 0, ip).into(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let ep = |ip: u8| Endpoint {
        ip: Ipv4Addr::new(10, 244, 0, ip).into(),
        port: 8080,
    };
    let state = |entries: &[(u8, &[u8])]| DesiredState {
        frontends: entries
            .iter()
            .map(|(f, eps)| {
                (
                    fe(*f),
                    FrontendState {
                        kind: FrontendKind::ClusterIp,
                        affinity_timeout_s: 0,
                        policy_local: false,
                        node_local: BTreeSet::new(),
                        any_endpoints: true,
                        in_cluster: None,
                        source_ranges: Vec::new(),
                        name: ServicePortName {
                            namespace: "ns".into(),
                            name: format!("s{f}").into(),
                            port: String::new(),
                        },
                        endpoints: eps.iter().map(|e| ep(*e)).collect::<BTreeSet<_>>().into(),
                    },
                )
            })
            .collect(),
    };
    let (mut maps, mut ids) = programmed(&state(&[(1, &[1, 2])]));
    maps.backend_capacity = 3; // room for one more backend only
                               // s1 scales to 4 backends (needs 2 more: one will not fit); s2 is new
                               // and reuses backend 1.
    let target = render(&state(&[(1, &[1, 2, 3, 4]), (2, &[1])]), &mut ids).state;
    let report = apply(&plan(&target, &maps.state), &mut maps);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(matches!(report.failed[0].1, MapsError::Full { .. }));
    check_invariant(&maps.state).expect("invariant");
    let view = proxy_agent::datapath::DumpView::from_state(&maps.state).to_string();
    assert!(
        view.contains("ns/s2 10.96.0.2:80/TCP -> 1 backend"),
        "{view}"
    );
    assert!(
        view.contains("ns/s1 10.96.0.1:80/TCP -> 2 backends"),
        "s1 keeps its old backends: {view}"
    );
}
