//! Conntrack garbage collection: which entries of the TC datapath's
//! conntrack map to delete. The LRU map evicts the oldest entries only when
//! full; these rules give flows kube-proxy's lifetimes (the kernel
//! conntrack timeouts kube-proxy sets or relies on) and purge UDP flows to
//! backends that left their Service — otherwise a client that keeps sending
//! (a resolver to kube-dns) would keep talking to a dead pod.
use std::collections::{BTreeMap, BTreeSet};

use proxy_common::{ct_state, proto, CtKey, CtValue};

/// Idle timeouts in seconds, by protocol and TCP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// A SYN without an answer (nf_conntrack_tcp_timeout_syn_sent).
    pub tcp_syn: u32,
    /// kube-proxy's `conntrack.tcpEstablishedTimeout` default (24 h).
    pub tcp_established: u32,
    /// After FIN/RST (nf_conntrack_tcp_timeout_time_wait).
    pub tcp_closing: u32,
    /// UDP (nf_conntrack_udp_timeout_stream).
    pub udp: u32,
    /// Anything else (SCTP...).
    pub other: u32,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        CtTimeouts {
            tcp_syn: 120,
            tcp_established: 86_400,
            tcp_closing: 120,
            udp: 120,
            other: 600,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CtExpiry {
    /// No packet for longer than its timeout.
    Idle,
    /// A UDP flow whose backend no longer serves its frontend.
    BackendGone,
}

impl CtExpiry {
    pub fn as_str(self) -> &'static str {
        match self {
            CtExpiry::Idle => "idle",
            CtExpiry::BackendGone => "backend_gone",
        }
    }
}

/// Whether to delete the entry, and why. `live` holds the (revNAT id,
/// backend id) pairs the service map holds now; `now_s` is the kernel's
/// monotonic clock in seconds (the clock of `last_seen_s`).
pub fn expiry(
    key: &CtKey,
    value: &CtValue,
    now_s: u32,
    live: &BTreeSet<(u32, u32)>,
    t: &CtTimeouts,
) -> Option<CtExpiry> {
    // TCP flows keep their backend for their whole life, even after it
    // left the Service; UDP has no end, so its flows are cut at once.
    if key.proto == proto::UDP && !live.contains(&(u32::from(value.rev_nat_id), value.backend_id)) {
        return Some(CtExpiry::BackendGone);
    }
    let timeout = match (key.proto, value.tcp_state) {
        (proto::TCP, ct_state::ESTABLISHED) => t.tcp_established,
        (proto::TCP, ct_state::CLOSING) => t.tcp_closing,
        (proto::TCP, _) => t.tcp_syn,
        (proto::UDP, _) => t.udp,
        _ => t.other,
    };
    (idle_s(now_s, value.last_seen_s) > timeout).then_some(CtExpiry::Idle)
}

/// The entries to delete from a snapshot of both conntrack tables, and
/// why. A flow's two directions go together: an entry only goes when the
/// entry of its other direction (pointing back at it) goes too. The reply
/// entry of a SNATed flow reserves its SNAT port, so the port is never
/// freed while either direction lives; a one-way UDP stream keeps its idle
/// reply entry as long as it sends.
pub fn expired_flows(
    entries: &BTreeMap<CtKey, CtValue>,
    now_s: u32,
    live: &BTreeSet<(u32, u32)>,
    t: &CtTimeouts,
) -> BTreeMap<CtKey, CtExpiry> {
    entries
        .iter()
        .filter_map(|(k, v)| {
            let why = expiry(k, v, now_s, live, t)?;
            match partner_of(entries, k, v) {
                Some((pk, pv)) if expiry(&pk, pv, now_s, live, t).is_none() => None,
                _ => Some((*k, why)),
            }
        })
        .collect()
}

/// The entry of the other direction of `k`'s flow, when it is there and
/// names `k` back (a reused tuple's new flow does not).
fn partner_of<'a>(
    entries: &'a BTreeMap<CtKey, CtValue>,
    k: &CtKey,
    v: &CtValue,
) -> Option<(CtKey, &'a CtValue)> {
    let pk = k.partner(v)?;
    let pv = entries.get(&pk)?;
    (pk.partner(pv) == Some(*k)).then_some((pk, pv))
}

/// Seconds since `last_seen_s` at `now_s` (both the kernel's monotonic
/// clock); 0 when the kernel stamped a second we have not read yet (the
/// wrapped difference then lies in the upper half).
pub fn idle_s(now_s: u32, last_seen_s: u32) -> u32 {
    match now_s.wrapping_sub(last_seen_s) {
        ahead if ahead >= u32::MAX / 2 => 0,
        idle => idle,
    }
}

/// The kernel's monotonic clock in seconds, as `bpf_ktime_get_ns` counts.
pub fn monotonic_now_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::ct_dir;

    fn entry(p: u8, state: u8, last_seen_s: u32, rev: u16, be: u32) -> (CtKey, CtValue) {
        let key = CtKey {
            saddr_be: 1,
            daddr_be: 2,
            sport_be: 3,
            dport_be: 4,
            proto: p,
            dir: 0,
            _pad: 0,
        };
        let value = CtValue {
            addr_be: 0,
            port_be: 0,
            flags: 0,
            tcp_state: state,
            nat_addr_be: 0,
            nat_port_be: 0,
            rev_nat_id: rev,
            backend_id: be,
            last_seen_s,
        };
        (key, value)
    }

    #[test]
    fn udp_flows_to_a_departed_backend_are_purged_tcp_flows_are_not() {
        let live = BTreeSet::from([(1, 10)]);
        let t = CtTimeouts::default();
        let (k, v) = entry(proto::UDP, ct_state::NONE, 100, 1, 11);
        assert_eq!(expiry(&k, &v, 101, &live, &t), Some(CtExpiry::BackendGone));
        let (k, v) = entry(proto::UDP, ct_state::NONE, 100, 1, 10);
        assert_eq!(expiry(&k, &v, 101, &live, &t), None);
        let (k, v) = entry(proto::TCP, ct_state::ESTABLISHED, 100, 1, 11);
        assert_eq!(
            expiry(&k, &v, 101, &live, &t),
            None,
            "the flow keeps its backend"
        );
    }

    /// A SNATed flow's two entries as `ct::create` writes them, the
    /// forward one last seen at `fwd_s`, the reply one at `back_s`.
    fn snat_flow(sport: u16, snat_port: u16, fwd_s: u32, back_s: u32) -> [(CtKey, CtValue); 2] {
        use proxy_common::ct_flags::{REDIRECT, SNAT};
        let ip = |a: u8| u32::from_be_bytes([10, 0, 0, a]).to_be();
        let (client, front, be, snat) = (ip(7), ip(1), ip(6), ip(1));
        let fwd = CtKey {
            saddr_be: client,
            daddr_be: front,
            sport_be: sport,
            dport_be: 80,
            proto: proto::UDP,
            dir: ct_dir::FORWARD,
            _pad: 0,
        };
        let back = CtKey {
            saddr_be: be,
            daddr_be: snat,
            sport_be: 8080,
            dport_be: snat_port,
            proto: proto::UDP,
            dir: ct_dir::REPLY_SNAT,
            _pad: 0,
        };
        let value = |addr_be, port_be, nat_addr_be, nat_port_be, flags, last_seen_s| CtValue {
            addr_be,
            port_be,
            flags,
            tcp_state: 0,
            nat_addr_be,
            nat_port_be,
            rev_nat_id: 1,
            backend_id: 10,
            last_seen_s,
        };
        [
            (
                fwd,
                value(be, 8080, snat, snat_port, SNAT | REDIRECT, fwd_s),
            ),
            (back, value(client, sport, front, 80, REDIRECT, back_s)),
        ]
    }

    #[test]
    fn a_flows_directions_expire_together() {
        let live = BTreeSet::from([(1, 10)]);
        let t = CtTimeouts::default();
        // A one-way stream: the reply entry idles, the forward one lives.
        let one_way = BTreeMap::from(snat_flow(1, 61001, 1000, 100));
        assert!(expired_flows(&one_way, 1000, &live, &t).is_empty());
        // Both idle: both go.
        let idle = BTreeMap::from(snat_flow(1, 61001, 100, 100));
        assert_eq!(expired_flows(&idle, 1000, &live, &t).len(), 2);
        // The backend left: both go at once.
        let gone = expired_flows(&one_way, 1000, &BTreeSet::new(), &t);
        assert_eq!(gone.len(), 2);
        // An orphan reply entry (its forward entry evicted) idles alone.
        let [_, back] = snat_flow(1, 61001, 1000, 100);
        assert_eq!(
            expired_flows(&BTreeMap::from([back]), 1000, &live, &t).len(),
            1
        );
    }

    proptest::proptest! {
        /// Over any mix of flows and orphans, an expired entry's live
        /// partner always stays: no SNAT port is freed under a live flow.
        #[test]
        fn no_entry_goes_while_its_partner_stays(
            flows in proptest::collection::vec((0u16..8, 61000u16..61004, 0u32..400, 0u32..400, proptest::bool::ANY, proptest::bool::ANY), 0..24),
        ) {
            let live = BTreeSet::from([(1, 10)]);
            let t = CtTimeouts::default();
            let mut entries = BTreeMap::new();
            for (sport, port, fwd_s, back_s, keep_fwd, keep_back) in flows {
                let [fwd, back] = snat_flow(sport, port, fwd_s, back_s);
                if keep_fwd { entries.insert(fwd.0, fwd.1); }
                if keep_back { entries.insert(back.0, back.1); }
            }
            let gone = expired_flows(&entries, 300, &live, &t);
            for k in gone.keys() {
                let v = &entries[k];
                if let Some((pk, _)) = partner_of(&entries, k, v) {
                    proptest::prop_assert!(gone.contains_key(&pk), "{k:?} goes, its partner {pk:?} stays");
                }
            }
        }
    }

    #[test]
    fn idle_timeouts_follow_the_tcp_state() {
        let live = BTreeSet::from([(1, 10)]);
        let t = CtTimeouts::default();
        let at = |p: u8, s: u8, idle: u32| {
            let (k, v) = entry(p, s, 1000, 1, 10);
            expiry(&k, &v, 1000 + idle, &live, &t)
        };
        assert_eq!(at(proto::TCP, ct_state::ESTABLISHED, 86_400), None);
        assert_eq!(
            at(proto::TCP, ct_state::ESTABLISHED, 86_401),
            Some(CtExpiry::Idle)
        );
        assert_eq!(at(proto::TCP, ct_state::CLOSING, 121), Some(CtExpiry::Idle));
        assert_eq!(at(proto::TCP, ct_state::SYN_SENT, 119), None);
        assert_eq!(at(proto::UDP, ct_state::NONE, 121), Some(CtExpiry::Idle));
        // A last_seen a tick ahead of our clock is not "very old".
        let (k, v) = entry(proto::TCP, ct_state::CLOSING, 1001, 1, 10);
        assert_eq!(expiry(&k, &v, 1000, &live, &t), None);
    }
}
