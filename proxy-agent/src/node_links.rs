//! This node's links as the TC programs need them when they forward a flow
//! themselves: each device's interface index, the address traffic leaving
//! by it is SNATed to (its first IPv4 address, as MASQUERADE picks the
//! egress device's address) and its MTU; and whether it has an Ethernet
//! header, which the programs' packet parser expects.
//!
//! Read with ioctls on a socket of the agent's own network namespace: sysfs
//! may belong to another namespace (`nsenter --net` keeps the host's /sys).
use std::{collections::BTreeMap, ffi::CString, io, os::fd::AsRawFd, path::Path};

use proxy_common::{maps as names, DeviceValue};

use crate::{maps::MapsError, node_addrs::InterfaceAddr};

/// ARPHRD_ETHER: the link type of Ethernet-like devices (NICs, veths,
/// bridges, VXLAN). IPIP tunnels and WireGuard have none.
const ARPHRD_ETHER: u16 = 1;

/// What the datapath needs to know of one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// Packets on it start with an Ethernet header.
    pub ethernet: bool,
}

/// The facts of the link named `name`.
pub fn link(name: &str) -> io::Result<Link> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    let cname =
        CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL"))?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let mtu = ifreq(&sock, name, libc::SIOCGIFMTU)?;
    // SAFETY: SIOCGIFMTU filled the ifr_mtu member of the union.
    let mtu = unsafe { mtu.ifr_ifru.ifru_mtu } as u32;
    let hw = ifreq(&sock, name, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled the ifr_hwaddr member of the union.
    let family = unsafe { hw.ifr_ifru.ifru_hwaddr.sa_family };
    Ok(Link {
        name: name.to_string(),
        ifindex,
        mtu,
        ethernet: family == ARPHRD_ETHER,
    })
}

/// One `ioctl(SIOCGIF*)` on `name`.
fn ifreq(
    sock: &std::net::UdpSocket,
    name: &str,
    request: libc::c_ulong,
) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is a plain C struct; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a valid socket and a valid ifreq for these read-only requests.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req)
}

/// The device-map contents: for every link with an IPv4 address, its first
/// address (in interface order) and its MTU.
pub fn entries(ifaddrs: &[InterfaceAddr], links: &[Link]) -> BTreeMap<u32, DeviceValue> {
    let mut out = BTreeMap::new();
    for l in links {
        if let Some(ia) = ifaddrs.iter().find(|ia| ia.device == l.name) {
            out.insert(l.ifindex, DeviceValue::new(ia.addr, l.mtu));
        }
    }
    out
}

/// The links of the devices that carry an IPv4 address (a device that
/// vanished between the two reads is left out until the next read).
pub fn read_links(ifaddrs: &[InterfaceAddr]) -> Vec<Link> {
    let mut out: Vec<Link> = Vec::new();
    for ia in ifaddrs {
        if out.iter().any(|l| l.name == ia.device) {
            continue;
        }
        if let Ok(l) = link(&ia.device) {
            out.push(l);
        }
    }
    out
}

/// Writes the device map in `pin_dir` from the interfaces of the calling
/// thread's network namespace, as the agent's node watch does (for the
/// program tests and benchmarks, which have no node watch).
pub fn program_current(pin_dir: &Path) -> anyhow::Result<()> {
    let ifaddrs = crate::node_addrs::interface_addrs()?;
    program(pin_dir, &entries(&ifaddrs, &read_links(&ifaddrs)))?;
    Ok(())
}

/// Makes the pinned device map in `pin_dir` hold exactly `want`.
pub fn program(pin_dir: &Path, want: &BTreeMap<u32, DeviceValue>) -> Result<(), MapsError> {
    crate::maps::pinned::sync_hash(pin_dir, names::DEVICES, want)
}

/// The pinned device map in `pin_dir` (for `bpfproxy dump`).
pub fn read(pin_dir: &Path) -> Result<BTreeMap<u32, DeviceValue>, MapsError> {
    let map: aya::maps::HashMap<aya::maps::MapData, u32, DeviceValue> =
        crate::maps::pinned::open(pin_dir, names::DEVICES)?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn each_link_snats_to_its_first_address_and_keeps_its_mtu() {
        let ia = |device: &str, a: [u8; 4]| InterfaceAddr {
            device: device.to_string(),
            addr: Ipv4Addr::from(a),
        };
        let l = |name: &str, ifindex: u32, mtu: u32| Link {
            name: name.to_string(),
            ifindex,
            mtu,
            ethernet: true,
        };
        let ifaddrs = [
            ia("eth0", [192, 168, 1, 10]),
            ia("eth0", [192, 168, 1, 11]),
            ia("flannel.1", [10, 244, 0, 0]),
        ];
        let e = entries(
            &ifaddrs,
            &[
                l("eth0", 2, 1500),
                l("flannel.1", 5, 1450),
                l("eth1", 3, 1500),
            ],
        );
        assert_eq!(
            e.len(),
            2,
            "a link without an address has nothing to SNAT to"
        );
        assert_eq!(e[&2].snat_ip(), Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(e[&5].snat_ip(), Ipv4Addr::new(10, 244, 0, 0));
        assert_eq!(e[&5].mtu, 1450);
    }

    #[test]
    fn loopback_is_read_as_a_link_without_ethernet() {
        let lo = link("lo").unwrap();
        assert!(lo.ifindex > 0);
        assert!(lo.mtu > 0);
        assert!(!lo.ethernet);
        assert!(link("no-such-device0").is_err());
    }
}
