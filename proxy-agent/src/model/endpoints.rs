//! Which endpoints a Service port uses on this node: kube-proxy's
//! `CategorizeEndpoints` (topology hints, ready → serving+terminating
//! fallback, node-local set for the `Local` traffic policies).
use std::collections::BTreeSet;

use super::{
    slices::{SliceEndpoint, UsableSlice},
    Endpoint, NodeContext, Protocol,
};

/// The endpoints of one Service port, by traffic policy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// For `Cluster` traffic policy: topology-filtered ready endpoints, else
    /// serving+terminating ones.
    pub cluster: BTreeSet<Endpoint>,
    /// For `Local` traffic policy: this node's ready endpoints, else its
    /// serving+terminating ones.
    pub local: BTreeSet<Endpoint>,
    /// How many of this node's endpoints are ready (the fallback to
    /// serving+terminating ones aside): what the health check reports.
    pub local_ready: usize,
    /// Whether any usable endpoint exists anywhere (to tell "no local
    /// endpoints" apart from "no endpoints").
    pub any: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    None,
    SameNode,
    SameZone,
}

/// The endpoints of `port_name/protocol` across a Service's slices of one
/// IP family, with the target port each slice gives them.
pub fn categorize(
    slices: &[&UsableSlice],
    port_name: &str,
    protocol: Protocol,
    ipv6: bool,
    node: &NodeContext,
) -> Categorized {
    let eps: Vec<(Endpoint, &SliceEndpoint)> = slices
        .iter()
        .filter(|s| s.ipv6 == ipv6)
        .flat_map(|s| {
            s.ports
                .iter()
                .filter(move |p| p.name == port_name && p.protocol == protocol)
                .flat_map(move |p| {
                    s.endpoints.iter().map(move |e| {
                        (
                            Endpoint {
                                ip: e.ip,
                                port: p.port,
                            },
                            e,
                        )
                    })
                })
        })
        .collect();

    let topology = topology_mode(eps.iter().map(|(_, e)| *e), node);
    let available = |e: &SliceEndpoint| match topology {
        Topology::None => true,
        Topology::SameNode => has(&e.for_nodes, &node.name),
        Topology::SameZone => node.zone.as_deref().is_some_and(|z| has(&e.for_zones, z)),
    };
    let pick = |f: &dyn Fn(&SliceEndpoint) -> bool| -> BTreeSet<Endpoint> {
        eps.iter()
            .filter(|(_, e)| f(e))
            .map(|(ep, _)| *ep)
            .collect()
    };
    let serving_terminating = |e: &SliceEndpoint| !e.ready && e.serving && e.terminating;
    let is_local = |e: &SliceEndpoint| e.node_name.as_deref() == Some(node.name.as_str());

    // Ready endpoints in the topology; if there are none at all, the
    // serving-and-terminating ones (KEP-1669), so draining pods still answer.
    let mut cluster = pick(&|e| e.ready && available(e));
    if cluster.is_empty() {
        cluster = pick(&|e| serving_terminating(e) && available(e));
    }
    let mut local = pick(&|e| e.ready && is_local(e));
    let local_ready = local.len();
    if local.is_empty() {
        local = pick(&|e| serving_terminating(e) && is_local(e));
    }
    let any = eps.iter().any(|(_, e)| e.ready || serving_terminating(e));
    Categorized {
        cluster,
        local,
        local_ready,
        any,
    }
}

fn has(list: &Option<Vec<String>>, item: &str) -> bool {
    list.as_ref().is_some_and(|l| l.iter().any(|x| x == item))
}

/// kube-proxy's `topologyModeFromHints`: hints are used only when every
/// ready endpoint carries them and at least one is meant for this node (or
/// zone); otherwise they are ignored, so a half-hinted slice never
/// blackholes traffic.
fn topology_mode<'a>(
    eps: impl Iterator<Item = &'a SliceEndpoint> + Clone,
    node: &NodeContext,
) -> Topology {
    let ready: Vec<&SliceEndpoint> = eps.filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::None;
    }
    let hinted = |f: fn(&SliceEndpoint) -> &Option<Vec<String>>| {
        ready
            .iter()
            .all(|e| f(e).as_ref().is_some_and(|v| !v.is_empty()))
    };
    if hinted(|e| &e.for_nodes) && ready.iter().any(|e| has(&e.for_nodes, &node.name)) {
        return Topology::SameNode;
    }
    if let Some(zone) = node.zone.as_deref() {
        if hinted(|e| &e.for_zones) && ready.iter().any(|e| has(&e.for_zones, zone)) {
            return Topology::SameZone;
        }
    }
    Topology::None
}
