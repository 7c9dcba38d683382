//! DesiredState → MapState: the map contents that implement it.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use proxy_common::{svc_flags, BackendValue, RevNatValue, ServiceKey, ServiceValue};

use super::{ids::BackendIdent, Ids, MapState, SourceRangeEntry};
use crate::model::{DesiredState, Endpoint, Frontend, FrontendKind, FrontendState, Protocol};

#[derive(Debug, Default)]
pub struct RenderOutput {
    pub state: MapState,
    /// Frontends left out because an id space was exhausted.
    pub dropped: Vec<Frontend>,
}

/// Renders `desired` with stable ids from `ids` (which learns new ones and
/// forgets unused ones).
pub fn render(desired: &DesiredState, ids: &mut Ids) -> RenderOutput {
    let mut out = RenderOutput::default();
    let mut used_backends: BTreeSet<BackendIdent> = BTreeSet::new();
    let programmed = desired
        .frontends
        .iter()
        .filter_map(|(fe, fs)| programmable(fe).map(|ip| (ip, fe, fs)));
    for (vip, fe, fs) in programmed {
        let Some(rev_nat_id) = ids.frontend(*fe) else {
            out.dropped.push(*fe);
            continue;
        };
        // The node's view, and for eTP=Local external frontends the view
        // of in-cluster clients, under the same revNAT id: both lead to the
        // same frontend address, and session affinity per client spans them.
        let master_key = ServiceKey::new(vip, fe.port, fe.protocol.number(), 0);
        let mut views = vec![(master_key, &fs.endpoints, flags(fs))];
        if let Some(in_cluster) = &fs.in_cluster {
            views.push((
                master_key.in_cluster(),
                in_cluster,
                flags(fs) & svc_flags::REJECT,
            ));
        }
        let Some(backends) = views
            .iter()
            .map(|(_, eps, _)| backend_ids(ids, fe.protocol, eps))
            .collect::<Option<Vec<_>>>()
        else {
            out.dropped.push(*fe);
            continue;
        };
        for ((key, _, flags), backend_ids) in views.iter().zip(&backends) {
            let master = ServiceValue::master(0, rev_nat_id, *flags, fs.affinity_timeout_s);
            write_view(&mut out.state, *key, master, fs, backend_ids);
            used_backends.extend(backend_ids.iter().map(|(_, ep)| (*ep, fe.protocol)));
        }
        out.state
            .source_ranges
            .extend(fs.source_ranges.iter().map(|c| SourceRangeEntry {
                rev_nat_id: rev_nat_id as u32,
                net: c.network(),
                len: c.prefix(),
            }));
        out.state
            .rev_nat
            .insert(rev_nat_id as u32, RevNatValue::new(vip, fe.port));
        out.state
            .names
            .insert(rev_nat_id as u32, fs.name.to_string());
    }
    ids.retain(
        |ident: &BackendIdent| used_backends.contains(ident),
        |fe| desired.frontends.contains_key(fe) && programmable(fe).is_some(),
    );
    out
}

/// Backend ids of the IPv4 `endpoints`; None when the id space is full.
fn backend_ids(
    ids: &mut Ids,
    protocol: Protocol,
    endpoints: &BTreeSet<Endpoint>,
) -> Option<Vec<(u32, Endpoint)>> {
    endpoints
        .iter()
        .filter(|ep| ep.ip.is_ipv4())
        .map(|ep| ids.backend((*ep, protocol)).map(|id| (id, *ep)))
        .collect()
}

/// One view of a frontend: its backends, its slots and the master entry
/// (`master` with the count filled in) under `master_key`'s scope.
fn write_view(
    state: &mut MapState,
    master_key: ServiceKey,
    master: ServiceValue,
    fs: &FrontendState,
    backend_ids: &[(u32, Endpoint)],
) {
    let proto = master_key.proto;
    for (id, ep) in backend_ids {
        if let IpAddr::V4(ip) = ep.ip {
            let mut value = BackendValue::new(ip, ep.port, proto);
            if fs.node_local.contains(ep) {
                value = value.local();
            }
            state.backends.insert(*id, value);
        }
    }
    // Bounded by MAX_ENDPOINTS_PER_FRONTEND in the model.
    let count = u16::try_from(backend_ids.len()).unwrap_or(u16::MAX);
    let master = ServiceValue { count, ..master };
    for (i, (id, _)) in backend_ids.iter().take(count as usize).enumerate() {
        state.services.insert(
            master_key.with_slot(i as u16 + 1),
            ServiceValue::slot(&master, *id),
        );
    }
    state.services.insert(master_key, master);
}

/// Every IPv4 frontend: ClusterIPs for the socket programs, the external
/// kinds (NodePort at 0.0.0.0, externalIPs, LoadBalancer IPs) for the TC
/// programs and, from the node itself, the socket programs too. IPv6 waits
/// for the v6 programs.
fn programmable(fe: &Frontend) -> Option<Ipv4Addr> {
    match fe.ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

/// The master entry's flags: which datapath may translate traffic from
/// outside the node to this frontend, and whether it must keep the client
/// address.
fn flags(fs: &FrontendState) -> u16 {
    match fs.kind {
        FrontendKind::ClusterIp => 0,
        FrontendKind::NodePort | FrontendKind::ExternalIp | FrontendKind::LoadBalancer => {
            let mut flags = svc_flags::EXTERNAL;
            if fs.policy_local {
                flags |= svc_flags::ETP_LOCAL;
            }
            if !fs.any_endpoints {
                flags |= svc_flags::REJECT;
            }
            if !fs.source_ranges.is_empty() {
                flags |= svc_flags::SOURCE_RANGES;
            }
            flags
        }
    }
}
