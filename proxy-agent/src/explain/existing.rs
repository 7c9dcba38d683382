//! The TC view's first step (`tc::try_ingress`): a packet whose tuple has a
//! FORWARD conntrack entry follows it, whatever the frontends say now.
use proxy_common::{ct_dir, ct_flags, ct_state, CtKey, CtValue};

use super::{
    query::{Query, View},
    report::ExistingFlow,
    Snapshot,
};
use crate::datapath::ct_gc::idle_s;

/// The FORWARD entries of the client's flows to the destination: the one
/// of its port when given, else all of them. Sockets have none (they are
/// translated once, at connect()).
pub(super) fn flows(q: &Query, snap: &Snapshot) -> Vec<ExistingFlow> {
    let (View::FromOutside, Some((src, sport))) = (q.view, q.src) else {
        return Vec::new();
    };
    let proto = q.proto.number();
    snap.conntrack
        .iter()
        .filter(|(k, _)| {
            k.dir == ct_dir::FORWARD
                && k.proto == proto
                && k.src().0 == src
                && sport.is_none_or(|p| k.src().1 == p)
                && k.dst() == (q.dst, q.dport)
        })
        .map(|(k, v)| flow(snap, k, v))
        .collect()
}

fn flow(snap: &Snapshot, k: &CtKey, v: &CtValue) -> ExistingFlow {
    let (cip, cport) = k.src();
    let (bip, bport) = v.addr();
    let (nip, nport) = v.nat_addr();
    ExistingFlow {
        client: format!("{cip}:{cport}"),
        backend: format!("{bip}:{bport}"),
        backend_id: v.backend_id,
        snat: (v.flags & ct_flags::SNAT != 0).then(|| format!("{nip}:{nport}")),
        state: match v.tcp_state {
            ct_state::SYN_SENT => "syn-sent",
            ct_state::ESTABLISHED => "established",
            ct_state::CLOSING => "closing",
            _ => "",
        }
        .to_string(),
        idle_s: idle_s(snap.now_s, v.last_seen_s),
        confirmed: !snap.unconfirmed.contains(k),
    }
}
