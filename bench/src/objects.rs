//! Synthetic clusters: Service `bench/svc-<i>` with one port and two
//! endpoints, ClusterIPs 10.96.0.0/16 and endpoints 10.201.0.0/16 (never
//! sent to: the benchmarks only read maps).
use std::net::Ipv4Addr;

use bpfproxy_tests::manifest;

pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250 + 1) as u8, (i % 250 + 1) as u8)
}

/// The `version`-th endpoint address of Service `i` (versions make every
/// change distinguishable).
pub fn endpoint(i: usize, version: usize) -> Ipv4Addr {
    let n = i * 2 + version * 20_011;
    Ipv4Addr::new(
        10,
        201 + (n / 62_500 % 50) as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 1) as u8,
    )
}

pub fn service_yaml(i: usize) -> String {
    manifest::service(
        &format!("bench/svc-{i}"),
        &vip(i).to_string(),
        &[("http", 80, 8080, "TCP")],
    )
}

pub fn slice_yaml(i: usize, version: usize) -> String {
    let a = endpoint(i, version).to_string();
    let b = endpoint(i, version + 1).to_string();
    manifest::endpoint_slice(
        &format!("bench/svc-{i}"),
        &format!("svc-{i}-1"),
        &[a.as_str(), b.as_str()],
        &[("http", 8080, "TCP")],
        &[],
    )
}
