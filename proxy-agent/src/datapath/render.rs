//! DesiredState → MapState: the map contents that implement it.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use proxy_common::{BackendValue, RevNatValue, ServiceKey, ServiceValue};

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
        .filter_map(|(fe, fs)| programmable(fe, fs).map(|ip| (ip, fe, fs)));
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
                out.state
                    .backends
                    .insert(*id, BackendValue::new(ip, ep.port, proto));
            }
        }
        // Bounded by MAX_ENDPOINTS_PER_FRONTEND in the model.
        let count = u16::try_from(backend_ids.len()).unwrap_or(u16::MAX);
        let master = ServiceValue::master(count, rev_nat_id, 0, fs.affinity_timeout_s);
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
        |fe| {
            desired
                .frontends
                .get(fe)
                .is_some_and(|fs| programmable(fe, fs).is_some())
        },
    );
    out
}

/// The socket programs serve IPv4 ClusterIPs; the other kinds wait for the
/// per-packet (TC) datapath and IPv6 for the v6 programs.
fn programmable(fe: &Frontend, fs: &FrontendState) -> Option<Ipv4Addr> {
    match (fs.kind, fe.ip) {
        (FrontendKind::ClusterIp, IpAddr::V4(ip)) => Some(ip),
        _ => None,
    }
}
