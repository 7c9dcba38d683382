//! DesiredState → MapState: the map contents that implement it.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use proxy_common::{svc_flags, BackendValue, RevNatValue, ServiceKey, ServiceValue};

use super::{ids::BackendIdent, Ids, MapState};
use crate::model::{DesiredState, Frontend, FrontendKind, FrontendState};

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
    'frontends: for (vip, fe, fs) in programmed {
        let proto = fe.protocol.number();
        let Some(rev_nat_id) = ids.frontend(*fe) else {
            out.dropped.push(*fe);
            continue;
        };
        let mut backend_ids = Vec::with_capacity(fs.endpoints.len());
        for ep in fs.endpoints.iter().filter(|ep| ep.ip.is_ipv4()) {
            let Some(id) = ids.backend((*ep, fe.protocol)) else {
                out.dropped.push(*fe);
                continue 'frontends;
            };
            backend_ids.push((id, *ep));
        }
        for (id, ep) in &backend_ids {
            used_backends.insert((*ep, fe.protocol));
            if let IpAddr::V4(ip) = ep.ip {
                let mut value = BackendValue::new(ip, ep.port, proto);
                if fs.node_local.contains(ep) {
                    value = value.local();
                }
                out.state.backends.insert(*id, value);
            }
        }
        // Bounded by MAX_ENDPOINTS_PER_FRONTEND in the model.
        let count = u16::try_from(backend_ids.len()).unwrap_or(u16::MAX);
        let master = ServiceValue::master(count, rev_nat_id, flags(fs), fs.affinity_timeout_s);
        for (i, (id, _)) in backend_ids.iter().take(count as usize).enumerate() {
            let slot = i as u16 + 1;
            out.state.services.insert(
                ServiceKey::new(vip, fe.port, proto, slot),
                ServiceValue::slot(&master, *id),
            );
        }
        out.state
            .services
            .insert(ServiceKey::new(vip, fe.port, proto, 0), master);
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
            flags
        }
    }
}
