//! Session affinity (`lb::pick_in`): a client's entry pins it to a backend
//! while `now - last_used <= timeout` and the backend id is still in the
//! backend map. Sockets are keyed by netns cookie, packets from outside by
//! the client address tagged with `AFFINITY_CLIENT_IP`.
use std::net::Ipv4Addr;

use proxy_common::{AffinityKey, AffinityValue, ServiceValue, AFFINITY_CLIENT_IP};

use super::{
    query::{Query, View},
    report::{AffinityEntry, AffinityStep},
    Snapshot,
};

/// The affinity step of a frontend view with master `master`; None without
/// session affinity.
pub(super) fn step(q: &Query, snap: &Snapshot, master: &ServiceValue) -> Option<AffinityStep> {
    if master.affinity_timeout_s == 0 {
        return None;
    }
    let rev = u32::from(master.rev_nat_id);
    let client = client_key(q);
    let entry_of = |k: &AffinityKey, v: &AffinityValue| entry(snap, master, k, v);
    let entry = client.and_then(|c| {
        let k = AffinityKey {
            client: c,
            rev_nat_id: rev,
            _pad: 0,
        };
        snap.affinity.get(&k).map(|v| entry_of(&k, v))
    });
    // Without this client's key, every entry of its kind for the frontend:
    // the user can tell theirs apart.
    let tagged = q.view == View::FromOutside;
    let other_entries = match client {
        Some(_) => Vec::new(),
        None => snap
            .affinity
            .iter()
            .filter(|(k, _)| k.rev_nat_id == rev && (k.client & AFFINITY_CLIENT_IP != 0) == tagged)
            .map(|(k, v)| entry_of(k, v))
            .collect(),
    };
    Some(AffinityStep {
        timeout_s: master.affinity_timeout_s,
        client_key: client.map(describe_client),
        entry,
        other_entries,
    })
}

/// What the kernel calls this client in the affinity map, if known.
fn client_key(q: &Query) -> Option<u64> {
    match q.view {
        View::Socket => q.netns_cookie,
        View::FromOutside => q
            .src
            .map(|(ip, _)| AFFINITY_CLIENT_IP | u64::from(u32::from_ne_bytes(ip.octets()))),
    }
}

fn describe_client(client: u64) -> String {
    if client & AFFINITY_CLIENT_IP != 0 {
        // The low 32 bits are the address as the packet carries it.
        let addr_be = (client & u64::from(u32::MAX)) as u32;
        Ipv4Addr::from(addr_be.to_ne_bytes()).to_string()
    } else {
        format!("netns cookie {client}")
    }
}

fn entry(
    snap: &Snapshot,
    master: &ServiceValue,
    k: &AffinityKey,
    v: &AffinityValue,
) -> AffinityEntry {
    // The kernel's clock never goes back; wrapping as the program computes.
    let idle_s = snap.now_s.wrapping_sub(v.last_used_s);
    AffinityEntry {
        client: describe_client(k.client),
        backend_id: v.backend_id,
        backend: snap
            .maps
            .backends
            .get(&v.backend_id)
            .map(|b| format!("{}:{}", b.ip(), b.port())),
        idle_s,
        expires_in_s: master.affinity_timeout_s.checked_sub(idle_s),
    }
}
