//! Userspace-only conversions: the one place where byte order is converted.
use core::net::Ipv4Addr;

use crate::{
    AffinityKey, AffinityValue, BackendStatKey, BackendValue, CtKey, CtValue, DeviceValue,
    NodeAddrValue, RevNatValue, ServiceKey, ServiceName, ServiceStats, ServiceValue, SockRevNatKey,
    SockRevNatValue, SourceRange, BACKEND_STATE_ACTIVE, SERVICE_NAME_LEN,
};

// SAFETY: all of these are `#[repr(C)]`, `Copy`, and have no implicit padding
// (every padding byte is an explicit field), so any bit pattern is valid.
unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for crate::ct_filter::CtFilter {}
unsafe impl aya::Pod for ServiceStats {}
unsafe impl aya::Pod for BackendStatKey {}
unsafe impl aya::Pod for ServiceValue {}
unsafe impl aya::Pod for BackendValue {}
unsafe impl aya::Pod for RevNatValue {}
unsafe impl aya::Pod for SockRevNatKey {}
unsafe impl aya::Pod for SockRevNatValue {}
unsafe impl aya::Pod for ServiceName {}
unsafe impl aya::Pod for AffinityKey {}
unsafe impl aya::Pod for AffinityValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for NodeAddrValue {}
unsafe impl aya::Pod for DeviceValue {}
unsafe impl aya::Pod for SourceRange {}

fn addr_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_be.to_ne_bytes())
}

impl ServiceKey {
    pub fn new(ip: Ipv4Addr, port: u16, proto: u8, slot: u16) -> Self {
        Self::slot_raw(addr_be(ip), port.to_be(), proto, slot)
    }
    pub fn ip(&self) -> Ipv4Addr {
        ip(self.addr_be)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
    /// The master key of the frontend this key belongs to.
    pub fn master(&self) -> Self {
        Self { slot: 0, ..*self }
    }
}

impl ServiceValue {
    pub fn master(count: u16, rev_nat_id: u16, flags: u16, affinity_timeout_s: u32) -> Self {
        Self {
            backend_id: 0,
            count,
            rev_nat_id,
            flags,
            _pad: 0,
            affinity_timeout_s,
        }
    }
    /// A backend slot: the master's fields with `backend_id` set.
    pub fn slot(master: &Self, backend_id: u32) -> Self {
        Self {
            backend_id,
            ..*master
        }
    }
}

impl BackendValue {
    pub fn new(ip: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr_be: addr_be(ip),
            port_be: port.to_be(),
            proto,
            state: BACKEND_STATE_ACTIVE,
        }
    }
    pub fn ip(&self) -> Ipv4Addr {
        ip(self.addr_be)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

impl RevNatValue {
    pub fn new(ip: Ipv4Addr, port: u16) -> Self {
        Self {
            addr_be: addr_be(ip),
            port_be: port.to_be(),
            _pad: 0,
        }
    }
    pub fn ip(&self) -> Ipv4Addr {
        ip(self.addr_be)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

impl CtKey {
    pub fn new(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8, dir: u8) -> Self {
        Self {
            saddr_be: addr_be(src),
            daddr_be: addr_be(dst),
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            proto,
            dir,
            _pad: 0,
        }
    }
    pub fn src(&self) -> (Ipv4Addr, u16) {
        (ip(self.saddr_be), u16::from_be(self.sport_be))
    }
    pub fn dst(&self) -> (Ipv4Addr, u16) {
        (ip(self.daddr_be), u16::from_be(self.dport_be))
    }
}

impl CtValue {
    /// `addr_be:port_be`, whose meaning depends on the key's direction.
    pub fn addr(&self) -> (Ipv4Addr, u16) {
        (ip(self.addr_be), u16::from_be(self.port_be))
    }
    pub fn nat_addr(&self) -> (Ipv4Addr, u16) {
        (ip(self.nat_addr_be), u16::from_be(self.nat_port_be))
    }
}

impl NodeAddrValue {
    pub fn new(snat: Ipv4Addr, flags: u32) -> Self {
        Self {
            snat_addr_be: addr_be(snat),
            flags,
        }
    }
    pub fn snat_ip(&self) -> Ipv4Addr {
        ip(self.snat_addr_be)
    }
}

impl SourceRange {
    pub fn new(rev_nat_id: u16, addr: Ipv4Addr) -> Self {
        Self {
            rev_nat_id_be: u32::from(rev_nat_id).to_be(),
            addr_be: addr_be(addr),
        }
    }
    pub fn rev_nat_id(&self) -> u32 {
        u32::from_be(self.rev_nat_id_be)
    }
    pub fn ip(&self) -> Ipv4Addr {
        ip(self.addr_be)
    }
}

impl DeviceValue {
    pub fn new(snat: Ipv4Addr, mtu: u32) -> Self {
        Self {
            snat_addr_be: addr_be(snat),
            mtu,
        }
    }
    pub fn snat_ip(&self) -> Ipv4Addr {
        ip(self.snat_addr_be)
    }
}

impl BackendValue {
    /// Marks the backend as running on this node ([`crate::BACKEND_FLAG_LOCAL`]).
    pub fn local(mut self) -> Self {
        self.state |= crate::BACKEND_FLAG_LOCAL;
        self
    }
}

impl SockRevNatKey {
    pub fn ip(&self) -> Ipv4Addr {
        ip(self.addr_be)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

impl ServiceName {
    /// Stores `name`, cut at [`SERVICE_NAME_LEN`] bytes on a char boundary.
    pub fn new(name: &str) -> Self {
        let mut end = name.len().min(SERVICE_NAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; SERVICE_NAME_LEN];
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        Self {
            len: end as u32,
            bytes,
        }
    }
    /// The stored name; an out-of-range length (a foreign or corrupt entry)
    /// reads as the whole buffer, never panics.
    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(SERVICE_NAME_LEN);
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("<invalid utf-8>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct_value(addr: (Ipv4Addr, u16), nat: (Ipv4Addr, u16), flags: u8) -> CtValue {
        CtValue {
            addr_be: addr_be(addr.0),
            port_be: addr.1.to_be(),
            flags,
            tcp_state: 0,
            nat_addr_be: addr_be(nat.0),
            nat_port_be: nat.1.to_be(),
            rev_nat_id: 1,
            backend_id: 1,
            last_seen_s: 0,
        }
    }

    #[test]
    fn each_direction_of_a_flow_names_the_other() {
        use crate::{ct_dir, ct_flags};
        let client = (Ipv4Addr::new(198, 51, 100, 7), 40000);
        let front = (Ipv4Addr::new(10, 0, 0, 1), 30080);
        let be = (Ipv4Addr::new(10, 244, 2, 6), 8080);
        let snat = (Ipv4Addr::new(10, 0, 0, 1), 61234);
        let tcp = crate::proto::TCP;
        let key = |(s, sp): (Ipv4Addr, u16), (d, dp): (Ipv4Addr, u16), dir| {
            CtKey::new(s, sp, d, dp, tcp, dir)
        };
        // Forwarded by the programs: FORWARD <-> REPLY_SNAT.
        let redirect = ct_flags::REDIRECT;
        let fwd = key(client, front, ct_dir::FORWARD);
        let fwd_v = ct_value(be, snat, ct_flags::SNAT | redirect);
        let back = key(be, snat, ct_dir::REPLY_SNAT);
        let back_v = ct_value(client, front, redirect);
        assert_eq!(fwd.partner(&fwd_v), Some(back));
        assert_eq!(back.partner(&back_v), Some(fwd));
        // Forwarded by the stack: FORWARD <-> REPLY.
        let fwd_v = ct_value(be, (Ipv4Addr::UNSPECIFIED, 0), 0);
        let reply = key(be, client, ct_dir::REPLY);
        let reply_v = ct_value(front, (Ipv4Addr::UNSPECIFIED, 0), 0);
        assert_eq!(fwd.partner(&fwd_v), Some(reply));
        assert_eq!(reply.partner(&reply_v), Some(fwd));
        // Entries of earlier versions pair otherwise.
        let old = key(client, be, ct_dir::FORWARD_SNAT);
        assert_eq!(old.partner(&ct_value(snat, snat, 0)), None);
        assert_eq!(fwd.partner(&ct_value(be, snat, ct_flags::SNAT)), None);
    }

    #[test]
    fn service_key_keeps_network_byte_order() {
        let k = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 10), 53, crate::proto::UDP, 0);
        assert_eq!(k.addr_be.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(k.port_be.to_ne_bytes(), [0, 53]);
        assert_eq!(k.ip(), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(k.port(), 53);
    }

    #[test]
    fn service_name_round_trips_and_truncates_on_char_boundary() {
        assert_eq!(
            ServiceName::new("default/web:http").as_str(),
            "default/web:http"
        );
        let long = "é".repeat(100); // 200 bytes
        let n = ServiceName::new(&long);
        assert!(n.len as usize <= SERVICE_NAME_LEN);
        assert_eq!(n.as_str(), "é".repeat(62));
    }
}
