//! Live flows of the TC datapath for `bpfproxy dump`, the way users read
//! `conntrack -L`: one line per connection from outside the node, with the
//! frontend it addressed, the backend it was given and the SNAT source the
//! backend sees. Read from the conntrack map's FORWARD entries (the other
//! directions are bookkeeping for the same flows).
use std::{collections::BTreeSet, fmt};

use proxy_common::{ct_dir, ct_flags, ct_state, CtKey, CtValue};
use serde::Serialize;

use super::ct_gc::idle_s;
use crate::model::Protocol;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FlowView {
    pub protocol: String,
    /// `ip:port` of the client as it reached the node.
    pub client: String,
    /// `ip:port` it addressed: a node address with the NodePort, an
    /// externalIP or a LoadBalancer IP.
    pub frontend: String,
    pub backend: String,
    /// The source the backend sees when it is on another node (eTP=Cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat: Option<String>,
    /// TCP: syn-sent, established, closing; UDP: empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Seconds since the flow's last packet.
    pub idle_s: u32,
    /// Confirmed (a TCP handshake completed, a second UDP packet): in the
    /// table a flood of new flows cannot evict; `[ASSURED]` as in
    /// `conntrack -L`.
    pub assured: bool,
}

/// The flows of `entries` (any order, any direction), sorted, at the
/// monotonic second `now_s`; `unconfirmed` are the keys from the new-flow
/// table.
pub fn flows<'a>(
    entries: impl IntoIterator<Item = (&'a CtKey, &'a CtValue)>,
    unconfirmed: &BTreeSet<CtKey>,
    now_s: u32,
) -> Vec<FlowView> {
    let mut out: Vec<FlowView> = entries
        .into_iter()
        .filter(|(k, _)| k.dir == ct_dir::FORWARD)
        .map(|(k, v)| {
            let (client, cport) = k.src();
            let (fe, fport) = k.dst();
            let (be, bport) = v.addr();
            let (nat, nport) = v.nat_addr();
            FlowView {
                protocol: Protocol::from_number(k.proto)
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| format!("proto-{}", k.proto)),
                client: format!("{client}:{cport}"),
                frontend: format!("{fe}:{fport}"),
                backend: format!("{be}:{bport}"),
                snat: (v.flags & ct_flags::SNAT != 0).then(|| format!("{nat}:{nport}")),
                state: state_name(v.tcp_state).to_string(),
                idle_s: idle_s(now_s, v.last_seen_s),
                assured: !unconfirmed.contains(k),
            }
        })
        .collect();
    out.sort();
    out
}

fn state_name(s: u8) -> &'static str {
    match s {
        ct_state::SYN_SENT => "syn-sent",
        ct_state::ESTABLISHED => "established",
        ct_state::CLOSING => "closing",
        _ => "",
    }
}

impl fmt::Display for FlowView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} => {}",
            self.protocol, self.client, self.frontend, self.backend
        )?;
        if let Some(s) = &self.snat {
            write!(f, " (snat {s})")?;
        }
        if !self.state.is_empty() {
            write!(f, " {}", self.state)?;
        }
        write!(f, " idle {}s", self.idle_s)?;
        if self.assured {
            write!(f, " [ASSURED]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proxy_common::proto;

    use super::*;

    #[test]
    fn forward_entries_become_flows_and_bookkeeping_is_hidden() {
        let client = Ipv4Addr::new(192, 168, 50, 100);
        let node = Ipv4Addr::new(192, 168, 50, 11);
        let pod = Ipv4Addr::new(10, 244, 2, 2);
        let fwd = CtKey::new(client, 40000, node, 30080, proto::TCP, ct_dir::FORWARD);
        let value = CtValue {
            addr_be: u32::from_ne_bytes(pod.octets()),
            port_be: 8080u16.to_be(),
            flags: ct_flags::SNAT,
            tcp_state: ct_state::ESTABLISHED,
            nat_addr_be: u32::from_ne_bytes(node.octets()),
            nat_port_be: 40000u16.to_be(),
            rev_nat_id: 1,
            backend_id: 1,
            last_seen_s: 95,
        };
        let reply = CtKey::new(pod, 8080, node, 40000, proto::TCP, ct_dir::REPLY_SNAT);
        let udp = CtKey::new(client, 5353, node, 30053, proto::UDP, ct_dir::FORWARD);
        let udp_value = CtValue {
            flags: 0,
            tcp_state: ct_state::NONE,
            last_seen_s: 101,
            ..value
        };
        let entries = [(fwd, value), (reply, value), (udp, udp_value)];
        let unconfirmed = BTreeSet::from([udp]);
        let got = flows(entries.iter().map(|(k, v)| (k, v)), &unconfirmed, 100);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0].to_string(),
            "TCP 192.168.50.100:40000 -> 192.168.50.11:30080 => 10.244.2.2:8080 \
             (snat 192.168.50.11:40000) established idle 5s [ASSURED]"
        );
        assert_eq!(
            got[1].to_string(),
            "UDP 192.168.50.100:5353 -> 192.168.50.11:30053 => 10.244.2.2:8080 idle 0s",
            "a stamp a second ahead of our clock reads as 0"
        );
    }
}
