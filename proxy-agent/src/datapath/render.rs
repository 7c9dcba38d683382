//! DesiredState → MapState: the map contents that implement it.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use proxy_common::{svc_flags, BackendValue, RevNatValue, ServiceKey, ServiceValue};

use super::{Ids, MapState, SourceRangeEntry};
use crate::model::{DesiredState, Endpoint, Frontend, FrontendKind, FrontendState, Protocol};

#[derive(Debug, Default)]
pub struct RenderOutput {
    pub state: MapState,
    /// Frontends left out because an id space was exhausted.
    pub dropped: Vec<Frontend>,
    /// Who uses each backend of `state`.
    pub users: BackendUsers,
}

/// Everything one frontend puts in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub rev_nat_id: u32,
    /// The node's view, and for eTP=Local external frontends the view of
    /// in-cluster clients, under the same revNAT id: both lead to the same
    /// frontend address, and session affinity per client spans them.
    pub views: Vec<View>,
    pub rev_nat: RevNatValue,
    pub name: String,
    pub ranges: Vec<SourceRangeEntry>,
}

/// One view of a frontend: its master entry and the backend of each slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub key: ServiceKey,
    pub master: ServiceValue,
    pub slots: Vec<Slot>,
}

/// The backend of one slot, and whether this frontend sees it on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub backend_id: u32,
    /// The backend's value without the local flag.
    pub base: BackendValue,
    pub local: bool,
}

/// How many frontend views use each backend, and how many of them see it
/// on this node: a backend is written while any view uses it, flagged
/// local when any view sees it so (Services naming one pod agree).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendUsers(BTreeMap<u32, Users>);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Users {
    all: u32,
    local: u32,
}

impl BackendUsers {
    fn add(&mut self, slot: &Slot) {
        let u = self.0.entry(slot.backend_id).or_default();
        u.all += 1;
        u.local += u32::from(slot.local);
    }

    fn remove(&mut self, slot: &Slot) {
        if let Some(u) = self.0.get_mut(&slot.backend_id) {
            u.all = u.all.saturating_sub(1);
            u.local = u.local.saturating_sub(u32::from(slot.local));
            if u.all == 0 {
                self.0.remove(&slot.backend_id);
            }
        }
    }

    /// `base` as the backend map should hold it, None when unused.
    pub fn value(&self, id: u32, base: BackendValue) -> Option<BackendValue> {
        let u = self.0.get(&id)?;
        Some(if u.local > 0 { base.local() } else { base })
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Piece {
    /// Adds the piece to `state`, and its backends' users to `users`.
    pub fn put(&self, state: &mut MapState, users: &mut BackendUsers) {
        self.put_entries(state);
        for slot in self.slots() {
            users.add(slot);
            if let Some(v) = users.value(slot.backend_id, slot.base) {
                state.backends.insert(slot.backend_id, v);
            }
        }
    }

    /// Takes the piece's backends' users out of `users`.
    pub fn release(&self, users: &mut BackendUsers) {
        for slot in self.slots() {
            users.remove(slot);
        }
    }

    /// Every map entry of the piece but the backends.
    pub fn put_entries(&self, state: &mut MapState) {
        for view in &self.views {
            for (i, slot) in view.slots.iter().enumerate() {
                state.services.insert(
                    view.key.with_slot(i as u16 + 1),
                    ServiceValue::slot(&view.master, slot.backend_id),
                );
            }
            state.services.insert(view.key, view.master);
        }
        state.rev_nat.insert(self.rev_nat_id, self.rev_nat);
        state.names.insert(self.rev_nat_id, self.name.clone());
        state.source_ranges.extend(self.ranges.iter().copied());
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.views.iter().flat_map(|v| &v.slots)
    }
}

/// Renders `desired` with stable ids from `ids` (which learns new ones and
/// forgets unused ones).
pub fn render(desired: &DesiredState, ids: &mut Ids) -> RenderOutput {
    render_frontends(desired.frontends.iter(), ids)
}

/// Renders `frontends` (in frontend order) with stable ids from `ids`,
/// which then forgets the ids none of them uses.
pub fn render_frontends<'a>(
    frontends: impl Iterator<Item = (&'a Frontend, &'a FrontendState)>,
    ids: &mut Ids,
) -> RenderOutput {
    let mut out = RenderOutput::default();
    let mut kept: Vec<Frontend> = Vec::new();
    for (fe, fs) in frontends {
        if programmable(fe).is_none() {
            continue;
        }
        kept.push(*fe);
        match render_frontend(fe, fs, ids) {
            Some(piece) => piece.put(&mut out.state, &mut out.users),
            None => out.dropped.push(*fe),
        }
    }
    // Already sorted when the frontends come in order (a linear pass).
    kept.sort_unstable();
    let users = &out.users;
    ids.retain(
        |id| users.0.contains_key(&id),
        |fe| kept.binary_search(fe).is_ok(),
    );
    out
}

/// What the IPv4 frontend `fe` puts in the maps, None when it is not
/// IPv4 or an id space is full.
pub fn render_frontend(fe: &Frontend, fs: &FrontendState, ids: &mut Ids) -> Option<Piece> {
    let vip = programmable(fe)?;
    let rev_nat_id = ids.frontend(*fe)?;
    let master_key = ServiceKey::new(vip, fe.port, fe.protocol.number(), 0);
    let in_cluster = fs.in_cluster.as_ref().map(|in_cluster| {
        (
            master_key.in_cluster(),
            in_cluster,
            flags(fs) & svc_flags::REJECT,
        )
    });
    let mut out = Vec::with_capacity(1 + usize::from(in_cluster.is_some()));
    let views = std::iter::once((master_key, &fs.endpoints, flags(fs))).chain(in_cluster);
    for (key, endpoints, flags) in views {
        let slots = slots(ids, fe.protocol, endpoints, &fs.node_local)?;
        // Bounded by MAX_ENDPOINTS_PER_FRONTEND in the model.
        let count = u16::try_from(slots.len()).unwrap_or(u16::MAX);
        let master = ServiceValue {
            count,
            ..ServiceValue::master(0, rev_nat_id, flags, fs.affinity_timeout_s)
        };
        out.push(View { key, master, slots });
    }
    Some(Piece {
        rev_nat_id: u32::from(rev_nat_id),
        views: out,
        rev_nat: RevNatValue::new(vip, fe.port),
        name: fs.name.label(),
        ranges: fs
            .source_ranges
            .iter()
            .map(|c| SourceRangeEntry {
                rev_nat_id: u32::from(rev_nat_id),
                net: c.network(),
                len: c.prefix(),
            })
            .collect(),
    })
}

/// The slots of the IPv4 `endpoints`; None when the id space is full.
fn slots(
    ids: &mut Ids,
    protocol: Protocol,
    endpoints: &BTreeSet<Endpoint>,
    node_local: &BTreeSet<Endpoint>,
) -> Option<Vec<Slot>> {
    let mut out = Vec::with_capacity(endpoints.len());
    for ep in endpoints.iter().take(u16::MAX as usize) {
        let IpAddr::V4(ip) = ep.ip else { continue };
        out.push(Slot {
            backend_id: ids.backend((*ep, protocol))?,
            base: BackendValue::new(ip, ep.port, protocol.number()),
            local: node_local.contains(ep),
        });
    }
    Some(out)
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
