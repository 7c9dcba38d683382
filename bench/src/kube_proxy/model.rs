//! The Services the kube-proxy rulesets are generated for: the same
//! synthetic cluster as the other benches ([`crate::objects`]), one TCP port
//! `http` 80 → 8080 and two endpoints per Service, and kube-proxy's names
//! for them.
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::objects;

/// The pod network kube-proxy is told about (`--cluster-cidr`): traffic from
/// outside it to a ClusterIP is marked for masquerade.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The target port of every Service's endpoints.
pub const TARGET_PORT: u16 = 8080;

/// One Service port as kube-proxy programs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SvcPort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<SocketAddrV4>,
}

impl SvcPort {
    /// Service `i` with the endpoints of its `version`-th EndpointSlice
    /// (as [`objects::slice_yaml`] makes it: versions `v` and `v + 1`
    /// share one endpoint, so a change replaces one of two).
    pub fn synthetic(i: usize, version: usize) -> Self {
        SvcPort {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            vip: objects::vip(i),
            port: 80,
            endpoints: [version, version + 1]
                .iter()
                .map(|v| SocketAddrV4::new(objects::endpoint(i, *v), TARGET_PORT))
                .collect(),
        }
    }

    /// `ns/name:port`, kube-proxy's ServicePortName.
    pub fn port_name(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

/// Services `0..n`, each with its first EndpointSlice.
pub fn cluster(n: usize) -> Vec<SvcPort> {
    (0..n).map(|i| SvcPort::synthetic(i, 0)).collect()
}

/// kube-proxy's chain-name hash: a stable digest of `what`, base32 encoded,
/// `len` characters. kube-proxy uses SHA-256; any stable digest gives chains
/// of the same length and spread, which is all the benchmark needs.
pub fn hash(what: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(len);
    let mut seed = 0u64;
    while out.len() < len {
        let mut h = fnv1a(what.as_bytes(), seed);
        // 12 characters of 5 bits from each 64-bit digest.
        for _ in 0..12 {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[(h & 31) as usize]));
            h >>= 5;
        }
        seed += 1;
    }
    out
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_distinct() {
        assert_eq!(hash("bench/svc-1:http", 16), hash("bench/svc-1:http", 16));
        assert_ne!(hash("bench/svc-1:http", 16), hash("bench/svc-2:http", 16));
        assert_eq!(hash("x", 16).len(), 16);
        assert_eq!(hash("x", 8).len(), 8);
        assert!(hash("x", 16).chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn a_change_replaces_one_endpoint_of_two() {
        let (a, b) = (SvcPort::synthetic(7, 0), SvcPort::synthetic(7, 1));
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.endpoints[1], b.endpoints[0]);
        assert_ne!(a.endpoints[0], b.endpoints[1]);
        assert_eq!(a.port_name(), "bench/svc-7:http");
    }
}
