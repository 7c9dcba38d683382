//! This node's addresses for the TC datapath: which destinations NodePorts
//! answer on (`--nodeport-addresses`, kube-proxy's nodePortAddresses) and
//! which source remote-backend traffic is SNATed to.
use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::Path, str::FromStr};

use aya::maps::{HashMap, MapData};
use proxy_common::{maps as names, node_flags, NodeAddrValue};

use crate::maps::MapsError;

/// An IPv4 CIDR such as `10.0.0.0/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not an IPv4 CIDR (a.b.c.d/len, len ≤ 32)")]
pub struct CidrError {
    input: String,
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError {
            input: s.to_string(),
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        if prefix > 32 {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Ipv4Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// The network address: host bits cleared.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        // checked_shl: a /0 mask would shift by 32, which overflows.
        u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0)
    }
}

/// The addresses NodePorts answer on, in interface order: those inside any
/// of `filter`, or with an empty filter every non-loopback address
/// (loopback traffic never crosses a TC device; the socket programs serve
/// it).
pub fn select(addrs: &[Ipv4Addr], filter: &[Ipv4Cidr]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for ip in addrs {
        let wanted = if filter.is_empty() {
            !ip.is_loopback() && !ip.is_unspecified()
        } else {
            filter.iter().any(|c| c.contains(*ip))
        };
        if wanted && !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

/// The node-address map contents for `selected`: each address answers
/// NodePorts and SNATs to itself (replies then come back to the address
/// the client used); key 0.0.0.0 names the SNAT address for externalIPs
/// and LoadBalancer IPs: the first selected address.
pub fn entries(selected: &[Ipv4Addr]) -> BTreeMap<u32, NodeAddrValue> {
    let key = |ip: Ipv4Addr| u32::from_ne_bytes(ip.octets());
    let mut out: BTreeMap<u32, NodeAddrValue> = selected
        .iter()
        .map(|ip| (key(*ip), NodeAddrValue::new(*ip, node_flags::NODEPORT)))
        .collect();
    if let Some(first) = selected.first() {
        out.insert(0, NodeAddrValue::new(*first, 0));
    }
    out
}

/// What the node-address map holds: this node's addresses (network byte
/// order) and the SNAT address under key 0, as [`entries`] makes them.
pub type NodeAddrEntries = BTreeMap<u32, NodeAddrValue>;

/// One write to the node-address map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAddrOp {
    Upsert(u32, NodeAddrValue),
    Delete(u32),
}

/// The writes that make a map holding `actual` hold `want`: only the
/// entries that differ, new and changed ones first and stale ones last, so
/// an address that stays never stops answering NodePorts, and key 0 (the
/// SNAT address) is replaced in one write rather than deleted first.
pub fn plan(want: &NodeAddrEntries, actual: &NodeAddrEntries) -> Vec<NodeAddrOp> {
    let upserts = want
        .iter()
        .filter(|(k, v)| actual.get(k) != Some(v))
        .map(|(k, v)| NodeAddrOp::Upsert(*k, *v));
    let deletes = actual
        .keys()
        .filter(|k| !want.contains_key(k))
        .map(|k| NodeAddrOp::Delete(*k));
    upserts.chain(deletes).collect()
}

/// One IPv4 address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub device: String,
    pub addr: Ipv4Addr,
}

/// The IPv4 addresses of this network namespace's interfaces.
pub fn interface_addrs() -> std::io::Result<Vec<InterfaceAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of its family.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: AF_INET means a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                // SAFETY: ifa_name is a NUL-terminated interface name.
                let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
                out.push(InterfaceAddr {
                    device: name.to_string_lossy().into_owned(),
                    addr: Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                });
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Name prefixes of the pod side of a node: loopback, pod bridges and the
/// pods' veths of the common CNIs (flannel's `cni0`, kubenet's `cbr0`,
/// Calico's `cali*`, Docker's `docker0`, Cilium's, Weave's, kube-router's).
/// Pods reach Services through the socket programs; nothing forwarded to
/// a backend on another node leaves by these.
const POD_SIDE: [&str; 10] = [
    "lo", "cni", "cbr", "cali", "docker", "veth", "cilium_", "lxc", "weave", "kube-",
];

/// Name prefixes of overlays between the nodes (flannel's `flannel.1`,
/// Calico's `tunl0`/`vxlan.calico`, Geneve): they carry node-to-node
/// traffic, never clients from outside the cluster.
const OVERLAYS: [&str; 4] = ["flannel", "tunl", "vxlan", "genev"];

fn is_pod_side(device: &str) -> bool {
    POD_SIDE.iter().any(|p| device.starts_with(p))
}

/// `--devices` left to its default: the devices carrying one of the
/// node's `selected` addresses (those NodePorts answer on), in interface
/// order, except the pod side and the overlays.
pub fn auto_devices(ifaddrs: &[InterfaceAddr], selected: &[Ipv4Addr]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ia in ifaddrs {
        let overlay = OVERLAYS.iter().any(|p| ia.device.starts_with(p));
        let wanted = selected.contains(&ia.addr) && !is_pod_side(&ia.device) && !overlay;
        if wanted && !out.contains(&ia.device) {
            out.push(ia.device.clone());
        }
    }
    out
}

/// The devices besides the `serving` ones that traffic forwarded to a
/// backend on another node can leave by, and its replies come back by:
/// every other device with an IPv4 address except the pod side. That is
/// the overlay of a flannel, Calico IPIP or WireGuard node, and the
/// cluster NIC of a node whose clients come in by another.
pub fn reply_devices(ifaddrs: &[InterfaceAddr], serving: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ia in ifaddrs {
        let d = &ia.device;
        if !is_pod_side(d) && !serving.contains(d) && !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

/// Makes the pinned node-address map in `pin_dir` hold exactly `want`
/// (a NodePort never stops answering on an address that stays). The agent
/// writes this map from its sync loop only; this is for test harnesses and
/// benchmarks that run the programs without an agent.
pub fn program(pin_dir: &Path, want: &BTreeMap<u32, NodeAddrValue>) -> Result<(), MapsError> {
    crate::maps::pinned::sync_hash(pin_dir, names::NODE_ADDRS, want)
}

/// The addresses NodePorts answer on, as the pinned map in `pin_dir` holds
/// them (for `bpfproxy dump`).
pub fn read(pin_dir: &Path) -> Result<Vec<Ipv4Addr>, MapsError> {
    let map = open(pin_dir)?;
    let mut out: Vec<Ipv4Addr> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| *k != 0 && v.flags & node_flags::NODEPORT != 0)
        .map(|(k, _)| Ipv4Addr::from(k.to_ne_bytes()))
        .collect();
    out.sort();
    Ok(out)
}

fn open(pin_dir: &Path) -> Result<HashMap<MapData, u32, NodeAddrValue>, MapsError> {
    crate::maps::pinned::open(pin_dir, names::NODE_ADDRS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        assert!(cidr("10.0.0.0/8").contains(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(!cidr("10.0.0.0/8").contains(Ipv4Addr::new(11, 0, 0, 1)));
        assert!(cidr("0.0.0.0/0").contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(cidr("192.0.2.7/32").contains(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(!cidr("192.0.2.7/32").contains(Ipv4Addr::new(192, 0, 2, 8)));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0/8", ""] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn without_a_filter_every_address_but_loopback_is_selected() {
        let addrs = [
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(192, 168, 1, 1),
            Ipv4Addr::new(10, 0, 0, 1),
        ];
        assert_eq!(
            select(&addrs, &[]),
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(192, 168, 1, 1)]
        );
        assert_eq!(
            select(&addrs, &[cidr("192.168.0.0/16")]),
            [Ipv4Addr::new(192, 168, 1, 1)]
        );
    }

    #[test]
    fn auto_devices_carry_node_addresses_and_are_not_pod_side() {
        let ia = |device: &str, a: [u8; 4]| InterfaceAddr {
            device: device.to_string(),
            addr: Ipv4Addr::from(a),
        };
        // A flannel node: the uplink, a Wi-Fi link, the pod bridge and the
        // VXLAN device all carry addresses.
        let ifaddrs = [
            ia("lo", [127, 0, 0, 1]),
            ia("eth0", [192, 168, 1, 10]),
            ia("eth0", [192, 168, 1, 11]),
            ia("cni0", [10, 244, 0, 1]),
            ia("flannel.1", [10, 244, 0, 0]),
            ia("wlan0", [192, 168, 2, 10]),
        ];
        let addrs: Vec<Ipv4Addr> = ifaddrs.iter().map(|i| i.addr).collect();
        let every = select(&addrs, &[]);
        assert_eq!(auto_devices(&ifaddrs, &every), ["eth0", "wlan0"]);
        // --nodeport-addresses narrows the addresses, and so the devices.
        let only_lan = select(&addrs, &[cidr("192.168.1.0/24")]);
        assert_eq!(auto_devices(&ifaddrs, &only_lan), ["eth0"]);
        assert!(auto_devices(&ifaddrs, &[]).is_empty());
        // Replies of forwarded flows come back by the overlay; a device
        // left out of --devices is a reply device too.
        assert_eq!(
            reply_devices(&ifaddrs, &["eth0".into(), "wlan0".into()]),
            ["flannel.1"]
        );
        assert_eq!(
            reply_devices(&ifaddrs, &["eth0".into()]),
            ["flannel.1", "wlan0"]
        );
    }

    #[test]
    fn entries_answer_nodeports_and_name_the_snat_address() {
        let e = entries(&[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 1, 1)]);
        assert_eq!(e.len(), 3);
        assert_eq!(e[&0].snat_ip(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(e[&0].flags, 0);
        let k = u32::from_ne_bytes([10, 0, 1, 1]);
        assert_eq!(e[&k].snat_ip(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(e[&k].flags, node_flags::NODEPORT);
        assert!(entries(&[]).is_empty());
    }

    #[test]
    fn the_plan_writes_only_differences_and_deletes_last() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 1, 1);
        let c = Ipv4Addr::new(10, 0, 2, 1);
        let before = entries(&[a, b]);
        assert!(plan(&before, &before).is_empty(), "no change, no write");
        let after = entries(&[c, b]);
        let ops = plan(&after, &before);
        let key = |ip: Ipv4Addr| u32::from_ne_bytes(ip.octets());
        assert_eq!(
            ops,
            [
                NodeAddrOp::Upsert(0, NodeAddrValue::new(c, 0)),
                NodeAddrOp::Upsert(key(c), NodeAddrValue::new(c, node_flags::NODEPORT)),
                NodeAddrOp::Delete(key(a)),
            ],
            "b stays untouched; the SNAT entry is replaced in place"
        );
    }
}
