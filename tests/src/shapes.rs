//! The network shapes of real clusters, for the multi-node sandbox
//! ([`crate::multinode`]): how node-to-node (pod) traffic travels between
//! the nodes. Clients from outside always reach the nodes on the client
//! subnet (192.168.50.0/24); what differs is the device a node forwards a
//! packet for another node's pod by, and so the address a kube-proxy
//! replacement must SNAT to and the device replies come back by.
use std::{fmt, str::FromStr};

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{netns::Netns, process::ChildGuard, wireguard};

/// How the nodes of a sandbox cluster reach each other's pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkShape {
    /// One NIC per node for clients and nodes alike; other nodes' pod
    /// subnets routed via their node addresses (flannel host-gw, Calico
    /// without overlay, kubenet).
    #[default]
    HostGw,
    /// Flannel's VXLAN backend as k3s and kubeadm+flannel set it up:
    /// `flannel.1` (VNI 1, UDP 8472, MTU 1450, `10.244.N.0/32`) over the
    /// NIC, the `cni0` bridge (`10.244.N.1/24`), pods with MTU 1450, and
    /// per peer node an onlink route via its `flannel.1` address, a
    /// permanent neighbour and an FDB entry to its node address.
    Vxlan,
    /// A client-facing NIC (192.168.50.0/24) and a separate cluster NIC
    /// (192.168.60.0/24) that carries all node-to-node traffic.
    TwoNic,
    /// An L3 tunnel as WireGuard makes it (flannel's `wireguard-native`
    /// backend, k3s's default for encrypted clusters): `flannel-wg`, a
    /// device without link-layer header, `10.244.N.0/32`, MTU 1420, pods
    /// with MTU 1420, routes `10.244.M.0/24 dev flannel-wg`. Built from a
    /// TUN device and the `tunnel` relay (UDP 51820 between node
    /// addresses), since this kernel has no wireguard module; the TC
    /// programs see the same packets (IP at offset 0) as on WireGuard or
    /// IPIP.
    L3Tunnel,
    /// Flannel's `ipip` backend (and Calico's IPIP mode): `flannel.ipip`, an
    /// IPIP device with the node address as its local end and no remote,
    /// `10.244.N.0/32`, MTU 1480; per peer `10.244.M.0/24 via NODE_M dev
    /// flannel.ipip onlink` (the gateway becomes the outer destination).
    /// Needs the `ipip` module: the kernel matrix in VMs runs it.
    Ipip,
    /// Real WireGuard as flannel's `wireguard-native` backend sets it up:
    /// `flannel-wg`, `10.244.N.0/32`, MTU 1420, one peer per node (allowed
    /// IPs its pod subnet, endpoint its node address, UDP 51820). Needs the
    /// `wireguard` module and `wg`: the kernel matrix in VMs runs it.
    WireGuard,
}

/// Every shape any kernel can build.
pub const ALL: [NetworkShape; 6] = [
    NetworkShape::HostGw,
    NetworkShape::Vxlan,
    NetworkShape::TwoNic,
    NetworkShape::L3Tunnel,
    NetworkShape::Ipip,
    NetworkShape::WireGuard,
];

/// The WireGuard-shaped devices' name and UDP port (the relay's and the real
/// one's).
const L3_DEVICE: &str = "flannel-wg";
const L3_PORT: u16 = 51820;
/// Flannel's IPIP device.
const IPIP_DEVICE: &str = "flannel.ipip";

impl fmt::Display for NetworkShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkShape::HostGw => "host-gw",
            NetworkShape::Vxlan => "vxlan",
            NetworkShape::TwoNic => "two-nic",
            NetworkShape::L3Tunnel => "l3-tunnel",
            NetworkShape::Ipip => "ipip",
            NetworkShape::WireGuard => "wireguard",
        })
    }
}

impl FromStr for NetworkShape {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "host-gw" => NetworkShape::HostGw,
            "vxlan" => NetworkShape::Vxlan,
            "two-nic" => NetworkShape::TwoNic,
            "l3-tunnel" => NetworkShape::L3Tunnel,
            "ipip" => NetworkShape::Ipip,
            "wireguard" => NetworkShape::WireGuard,
            other => bail!(
                "unknown network shape {other:?} (host-gw, vxlan, two-nic, l3-tunnel, ipip, \
                 wireguard)"
            ),
        })
    }
}

/// Address of node `i` (1-based) on the client subnet.
pub fn node_ip(i: usize) -> String {
    format!("192.168.50.{}", 10 + i)
}

/// Address of node `i` on the cluster NIC of the two-NIC shape.
pub fn cluster_nic_ip(i: usize) -> String {
    format!("192.168.60.{}", 10 + i)
}

/// The `flannel.1` address of node `i` (flannel: the first address of
/// the node's pod subnet, as a /32).
pub fn overlay_ip(i: usize) -> String {
    format!("10.244.{i}.0")
}

/// The MAC of node `i`'s `flannel.1`: fixed, so peers can name it in
/// their neighbour and FDB entries (flannel publishes it in a Node
/// annotation).
fn overlay_mac(i: usize) -> String {
    format!("02:f1:0a:f4:{i:02x}:00")
}

impl NetworkShape {
    /// The name of the pod bridge on each node.
    pub fn pod_bridge(self) -> &'static str {
        match self {
            NetworkShape::Vxlan
            | NetworkShape::L3Tunnel
            | NetworkShape::Ipip
            | NetworkShape::WireGuard => "cni0",
            _ => "cbr0",
        }
    }

    /// The pods' MTU (flannel lowers it to the overlay's).
    pub fn pod_mtu(self) -> u32 {
        match self {
            NetworkShape::Vxlan => 1450,
            NetworkShape::L3Tunnel | NetworkShape::WireGuard => 1420,
            NetworkShape::Ipip => 1480,
            _ => 1500,
        }
    }

    /// The address node `i` forwards packets for other nodes' pods with:
    /// what a backend sees as the client of a SNATed connection through
    /// node `i` (MASQUERADE picks the egress device's address).
    pub fn snat_ip(self, i: usize) -> String {
        match self {
            NetworkShape::HostGw => node_ip(i),
            NetworkShape::TwoNic => cluster_nic_ip(i),
            _ => overlay_ip(i),
        }
    }

    /// The device node `i` forwards to other nodes' pods by, when it is
    /// not the client-facing NIC and the shape names it.
    pub fn overlay_device(self) -> Option<&'static str> {
        match self {
            NetworkShape::Vxlan => Some("flannel.1"),
            NetworkShape::L3Tunnel | NetworkShape::WireGuard => Some(L3_DEVICE),
            NetworkShape::Ipip => Some(IPIP_DEVICE),
            _ => None,
        }
    }

    /// Subnets besides the pod /16 and the client subnet that pods must
    /// route via their node (where SNATed connections come from).
    pub fn extra_pod_routes(self) -> &'static [&'static str] {
        match self {
            NetworkShape::TwoNic => &["192.168.60.0/24"],
            _ => &[],
        }
    }

    /// Node `i`'s overlay device over its NIC `nic`, for the shapes that
    /// have one (the two-NIC shape's second NIC is a veth the sandbox
    /// makes); `nodes` is the cluster's size. The L3 tunnel's relay process
    /// comes back: the device lives as long as it does.
    pub fn wire_node(
        self,
        ns: &Netns,
        i: usize,
        nic: &str,
        nodes: usize,
    ) -> Result<Option<ChildGuard>> {
        let (mac, overlay) = (overlay_mac(i), overlay_ip(i));
        match self {
            NetworkShape::Vxlan => {
                let local = node_ip(i);
                ns.ip_line(&format!(
                    "link add flannel.1 address {mac} type vxlan id 1 local {local} dev {nic} \
                     dstport 8472 nolearning"
                ))?;
                ns.ip_line("link set flannel.1 mtu 1450 up")?;
                ns.ip_line(&format!("addr add {overlay}/32 dev flannel.1"))?;
                Ok(None)
            }
            NetworkShape::L3Tunnel => {
                let relay = start_tunnel(ns, i, nodes)?;
                ns.ip_line(&format!("addr add {overlay}/32 dev {L3_DEVICE}"))?;
                ns.ip_line(&format!("link set {L3_DEVICE} mtu 1420 up"))?;
                Ok(Some(relay))
            }
            NetworkShape::Ipip => {
                ns.ip_line(&format!(
                    "link add {IPIP_DEVICE} type ipip local {} ttl inherit",
                    node_ip(i)
                ))
                .with_context(|| needs_module("ipip"))?;
                ns.ip_line(&format!("addr add {overlay}/32 dev {IPIP_DEVICE}"))?;
                ns.ip_line(&format!("link set {IPIP_DEVICE} mtu 1480 up"))?;
                Ok(None)
            }
            NetworkShape::WireGuard => {
                ns.ip_line(&format!("link add {L3_DEVICE} type wireguard"))
                    .with_context(|| needs_module("wireguard"))?;
                wireguard::set_private_key(ns, i, L3_DEVICE, L3_PORT)?;
                ns.ip_line(&format!("addr add {overlay}/32 dev {L3_DEVICE}"))?;
                ns.ip_line(&format!("link set {L3_DEVICE} mtu 1420 up"))?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Node `a`'s route to node `b`'s pod subnet (both 1-based).
    pub fn route_to_peer(self, ns: &Netns, b: usize) -> Result<()> {
        let subnet = format!("10.244.{b}.0/24");
        match self {
            NetworkShape::HostGw => {
                ns.ip(&["route", "add", &subnet, "via", &node_ip(b)])?;
            }
            NetworkShape::TwoNic => {
                ns.ip(&["route", "add", &subnet, "via", &cluster_nic_ip(b)])?;
            }
            NetworkShape::L3Tunnel => {
                ns.ip_line(&format!("route add {subnet} dev {L3_DEVICE}"))?;
            }
            NetworkShape::WireGuard => {
                let endpoint = format!("{}:{L3_PORT}", node_ip(b));
                wireguard::add_peer(ns, L3_DEVICE, b, &subnet, &endpoint)?;
                ns.ip_line(&format!("route add {subnet} dev {L3_DEVICE}"))?;
            }
            NetworkShape::Ipip => {
                ns.ip_line(&format!(
                    "route add {subnet} via {} dev {IPIP_DEVICE} onlink",
                    node_ip(b)
                ))?;
            }
            NetworkShape::Vxlan => {
                let (gw, mac) = (overlay_ip(b), overlay_mac(b));
                ns.ip_line(&format!("route add {subnet} via {gw} dev flannel.1 onlink"))?;
                ns.ip_line(&format!(
                    "neigh add {gw} lladdr {mac} dev flannel.1 nud permanent"
                ))?;
                let mut fdb = ns.command("bridge")?;
                fdb.args([
                    "fdb",
                    "append",
                    &mac,
                    "dev",
                    "flannel.1",
                    "dst",
                    &node_ip(b),
                ]);
                crate::process::run_with_timeout(&mut fdb, crate::process::HELPER_TIMEOUT)?;
            }
        }
        Ok(())
    }
}

/// Why a shape's device could not be made: this machine's own kernel is
/// built without these modules; the kernel matrix's VMs have them.
fn needs_module(module: &str) -> String {
    format!(
        "the {module} shape needs the kernel's {module} module, which this kernel lacks; \
         run it on Debian's kernels: cargo xtask test --kernel bullseye,sid --tier nodeport"
    )
}

/// The `tunnel` relay of node `i` inside `ns`, once its device exists.
fn start_tunnel(ns: &Netns, i: usize, nodes: usize) -> Result<ChildGuard> {
    let mut cmd = ns.command(crate::paths::tunnel_bin()?)?;
    cmd.args([
        "--dev",
        L3_DEVICE,
        "--listen",
        &format!("{}:{L3_PORT}", node_ip(i)),
    ]);
    for j in (1..=nodes).filter(|j| *j != i) {
        cmd.args([
            "--peer",
            &format!("10.244.{j}.0/24={}:{L3_PORT}", node_ip(j)),
        ]);
    }
    let relay = ChildGuard(cmd.spawn().context("starting the tunnel relay")?);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.ip(&["link", "show", L3_DEVICE]).is_err() {
        if Instant::now() > deadline {
            bail!("the tunnel relay of node {i} made no {L3_DEVICE} within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(relay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_by_their_names_and_say_what_the_kernel_lacks() {
        for shape in ALL {
            assert_eq!(shape.to_string().parse::<NetworkShape>().unwrap(), shape);
        }
        let e = "mesh".parse::<NetworkShape>().unwrap_err().to_string();
        assert!(e.contains("wireguard"), "{e}");
    }

    #[test]
    fn each_shape_snats_to_the_address_of_its_node_to_node_device() {
        assert_eq!(NetworkShape::HostGw.snat_ip(3), "192.168.50.13");
        assert_eq!(NetworkShape::Vxlan.snat_ip(3), "10.244.3.0");
        assert_eq!(NetworkShape::TwoNic.snat_ip(3), "192.168.60.13");
        assert_eq!(NetworkShape::L3Tunnel.snat_ip(3), "10.244.3.0");
        assert_eq!(NetworkShape::Ipip.snat_ip(3), "10.244.3.0");
        assert_eq!(NetworkShape::WireGuard.snat_ip(3), "10.244.3.0");
    }
}
