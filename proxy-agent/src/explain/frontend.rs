//! Which frontend entry a destination leads to, looked up as the kernel
//! does it (`lb::select` and `is_nodeport_address` for sockets,
//! `tc::frontend` for packets from outside), or why none.
use std::net::Ipv4Addr;

use proxy_common::{node_flags, scope, svc_flags, ServiceKey, ServiceValue};

use super::{
    query::{Query, View},
    report::NoMatch,
    Snapshot,
};
use crate::model::Protocol;

/// A matched frontend: the view whose slots the kernel picks from, and the
/// node's (scope 0) master, which carries the flags the TC path checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Found {
    pub key: ServiceKey,
    pub master: ServiceValue,
    pub node_master: ServiceValue,
    /// A NodePort reached on a node (or loopback) address.
    pub via_nodeport: bool,
}

pub(super) fn lookup(q: &Query, snap: &Snapshot) -> Result<Found, NoMatch> {
    match q.view {
        View::Socket => socket(q, snap),
        View::FromOutside => from_outside(q, snap),
    }
}

/// connect()/sendmsg(): the destination's own key, then the NodePort key
/// for loopback and node addresses flagged NODEPORT.
fn socket(q: &Query, snap: &Snapshot) -> Result<Found, NoMatch> {
    let proto = q.proto.number();
    let direct = ServiceKey::new(q.dst, q.dport, proto, 0);
    if let Some(found) = in_cluster_view(snap, direct, false) {
        return Ok(found);
    }
    if socket_nodeport_address(snap, q.dst) {
        let np = ServiceKey::new(Ipv4Addr::UNSPECIFIED, q.dport, proto, 0);
        if let Some(found) = in_cluster_view(snap, np, true) {
            return Ok(found);
        }
    }
    Err(why_none(q, snap))
}

/// The master under `key`, switched to its in-cluster view when it is an
/// eTP=Local frontend that has one (sockets are in-cluster clients).
fn in_cluster_view(snap: &Snapshot, key: ServiceKey, via_nodeport: bool) -> Option<Found> {
    let node_master = *snap.maps.services.get(&key)?;
    let mut found = Found {
        key,
        master: node_master,
        node_master,
        via_nodeport,
    };
    if node_master.flags & svc_flags::ETP_LOCAL != 0 {
        if let Some(view) = snap.maps.services.get(&key.in_cluster()) {
            found.key = key.in_cluster();
            found.master = *view;
        }
    }
    Some(found)
}

/// `tc::frontend`: a NodePort on a node address flagged NODEPORT, else the
/// destination's own key; either must be flagged EXTERNAL.
fn from_outside(q: &Query, snap: &Snapshot) -> Result<Found, NoMatch> {
    let proto = q.proto.number();
    if !q.dst.is_unspecified() && flagged_nodeport(snap, q.dst) {
        let np = ServiceKey::new(Ipv4Addr::UNSPECIFIED, q.dport, proto, 0);
        if let Some(m) = snap.maps.services.get(&np) {
            if m.flags & svc_flags::EXTERNAL != 0 {
                return Ok(node_view(np, *m, true));
            }
        }
    }
    let direct = ServiceKey::new(q.dst, q.dport, proto, 0);
    match snap.maps.services.get(&direct) {
        Some(m) if m.flags & svc_flags::EXTERNAL != 0 => Ok(node_view(direct, *m, false)),
        Some(_) => Err(NoMatch {
            code: "not-external",
            reason: format!(
                "{}:{}/{} is a ClusterIP: only the socket programs serve it, a packet \
                 from outside passes untouched",
                q.dst, q.dport, q.proto
            ),
        }),
        None => Err(why_none(q, snap)),
    }
}

fn node_view(key: ServiceKey, master: ServiceValue, via_nodeport: bool) -> Found {
    Found {
        key,
        master,
        node_master: master,
        via_nodeport,
    }
}

fn flagged_nodeport(snap: &Snapshot, ip: Ipv4Addr) -> bool {
    let key = u32::from_ne_bytes(ip.octets());
    snap.node_addrs
        .get(&key)
        .is_some_and(|n| n.flags & node_flags::NODEPORT != 0)
}

/// `sock::is_nodeport_address`: loopback, or a flagged node address.
fn socket_nodeport_address(snap: &Snapshot, ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 127 || flagged_nodeport(snap, ip)
}

/// Unknown port on a known address (a frontend's, or one NodePorts answer
/// on), else an unknown address.
fn why_none(q: &Query, snap: &Snapshot) -> NoMatch {
    let wanted = format!("{}/{}", q.dport, q.proto);
    let on_dst = ports_at(snap, q.dst);
    if !on_dst.is_empty() {
        return NoMatch {
            code: "unknown-port",
            reason: format!(
                "no such port: {} is a frontend on {}, not on {wanted}",
                q.dst,
                on_dst.join(", ")
            ),
        };
    }
    let nodeport_address = match q.view {
        View::Socket => socket_nodeport_address(snap, q.dst),
        View::FromOutside => flagged_nodeport(snap, q.dst),
    };
    if nodeport_address {
        let node_ports = ports_at(snap, Ipv4Addr::UNSPECIFIED);
        let known = if node_ports.is_empty() {
            "there are none".to_string()
        } else {
            format!("NodePorts are {}", node_ports.join(", "))
        };
        return NoMatch {
            code: "unknown-port",
            reason: format!(
                "no such port: {} is an address NodePorts answer on, but no NodePort is \
                 {wanted} ({known})",
                q.dst
            ),
        };
    }
    NoMatch {
        code: "unknown-vip",
        reason: format!(
            "unknown VIP: no frontend has the address {} and NodePorts do not answer on it; \
             the connection is left untouched",
            q.dst
        ),
    }
}

/// `port/PROTO` of every frontend keyed by `ip` (node view), sorted.
fn ports_at(snap: &Snapshot, ip: Ipv4Addr) -> Vec<String> {
    let mut out: Vec<String> = snap
        .maps
        .masters()
        .filter(|(k, _)| k.ip() == ip && k.scope == scope::NODE)
        .map(|(k, _)| match Protocol::from_number(k.proto) {
            Some(p) => format!("{}/{p}", k.port()),
            None => format!("{}/proto-{}", k.port(), k.proto),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
