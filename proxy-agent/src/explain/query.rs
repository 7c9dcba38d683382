//! What `bpfproxy explain` is asked about: one connection, from whom to
//! where, and which datapath sees it.
use std::{fmt, net::Ipv4Addr};

use serde::Serialize;

use crate::model::Protocol;

/// Which kernel programs decide for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum View {
    /// A process on this node or in a pod here: the socket programs
    /// translate its connect()/sendmsg(), once per socket.
    Socket,
    /// A packet arriving from outside the node on a device the TC programs
    /// are attached to: translated per packet, with conntrack.
    FromOutside,
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            View::Socket => "socket (a process on this node or in a pod here connecting)",
            View::FromOutside => "from outside (packets the TC programs see on the node's devices)",
        })
    }
}

/// One connection to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub view: View,
    /// The client's address and, when known, its source port.
    pub src: Option<(Ipv4Addr, Option<u16>)>,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub proto: Protocol,
    /// The client's network namespace cookie: what the socket programs key
    /// session affinity by (they never see an address).
    pub netns_cookie: Option<u64>,
}

/// `IP` or `IP:PORT`.
pub fn parse_src(s: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    match s.split_once(':') {
        None => Ok((parse_ip(s)?, None)),
        Some((ip, port)) => Ok((parse_ip(ip)?, Some(parse_port(port)?))),
    }
}

/// `IP:PORT` or `IP:PORT/PROTO` (TCP when left out; any case).
pub fn parse_dst(s: &str) -> Result<(Ipv4Addr, u16, Protocol), String> {
    let (addr, proto) = match s.split_once('/') {
        None => (s, Protocol::Tcp),
        Some((addr, p)) => (
            addr,
            p.to_ascii_uppercase()
                .parse()
                .map_err(|()| format!("unknown protocol {p:?} (TCP, UDP or SCTP)"))?,
        ),
    };
    let (ip, port) = addr
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: the destination needs a port (IP:PORT[/PROTO])"))?;
    Ok((parse_ip(ip)?, parse_port(port)?, proto))
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address (explain answers for IPv4 only)"))
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| format!("{s:?} is not a port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_optional_port_and_protocol() {
        let ip = Ipv4Addr::new(10, 96, 0, 10);
        assert_eq!(parse_src("10.96.0.10"), Ok((ip, None)));
        assert_eq!(parse_src("10.96.0.10:4000"), Ok((ip, Some(4000))));
        assert_eq!(parse_dst("10.96.0.10:53/udp"), Ok((ip, 53, Protocol::Udp)));
        assert_eq!(parse_dst("10.96.0.10:80"), Ok((ip, 80, Protocol::Tcp)));
        assert!(parse_dst("10.96.0.10").is_err());
        assert!(parse_dst("10.96.0.10:80/icmp").is_err());
        assert!(parse_src("fd00::1").is_err());
    }
}
