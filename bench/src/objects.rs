//! Synthetic clusters: Service `bench/svc-<i>` with one port and two
//! endpoints, ClusterIPs 10.96.0.0/16 and endpoints 10.201.0.0/16 (never
//! sent to: the benchmarks only read maps or run programs on packets they
//! hand to the kernel with BPF_PROG_TEST_RUN).
use std::{net::Ipv4Addr, sync::Arc};

use bpfproxy_tests::manifest;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proxy_agent::{
    model::{ServiceObject, SliceObject},
    source::Snapshot,
};

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

/// How the event clock names version `version` of Service `i`'s slice.
pub fn slice_key(i: usize, version: usize) -> String {
    bpfproxy_tests::event_clock::key(&format!("svc-{i}-1"), &endpoint(i, version).to_string())
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

/// Services `0..n` with their slices, as a source would hand them over.
pub fn snapshot(n: usize) -> anyhow::Result<Snapshot> {
    let mut snap = Snapshot::default();
    for i in 0..n {
        push(&mut snap, &service_yaml(i), &slice_yaml(i, 0))?;
    }
    Ok(snap)
}

/// Adds one Service and its EndpointSlice to `snap`.
pub fn push(snap: &mut Snapshot, service: &str, slice: &str) -> anyhow::Result<()> {
    snap.services
        .push(Arc::new(ServiceObject::new(&serde_yaml::from_str::<
            Service,
        >(service)?)));
    snap.slices
        .push(Arc::new(SliceObject::new(&serde_yaml::from_str::<
            EndpointSlice,
        >(slice)?)));
    Ok(())
}

/// `bench/nodeport`: a NodePort Service (ClusterIP 10.96.0.10, outside the
/// range of [`vip`]) with `backends` as ready endpoints on no particular
/// node, so this node SNATs the traffic it forwards to them.
pub fn nodeport_yaml(node_port: u16, target_port: u16, backends: &[Ipv4Addr]) -> (String, String) {
    let mut svc = manifest::ServiceSpec::cluster_ip("bench/nodeport", "10.96.0.10").port(
        "http",
        80,
        target_port,
        "TCP",
    );
    svc.type_ = "NodePort".into();
    for p in &mut svc.ports {
        p.node_port = Some(node_port);
    }
    let ips: Vec<String> = backends.iter().map(Ipv4Addr::to_string).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let slice = manifest::endpoint_slice(
        "bench/nodeport",
        "nodeport-1",
        &ips,
        &[("http", target_port, "TCP")],
        &[],
    );
    (svc.to_yaml(), slice)
}

/// Agent flags for map sizes that hold `services` Services with
/// `frontend_entries` service-map entries (a master and a slot per
/// endpoint each) and `backends` backends: the defaults (64k service
/// entries) stop short of 50k Services.
pub fn map_size_args(services: usize, frontend_entries: usize, backends: usize) -> Vec<String> {
    let size = |n: usize| n.max(65_536).next_power_of_two();
    vec![
        format!("--map-size-services={}", size(frontend_entries)),
        format!("--map-size-backends={}", size(backends)),
        format!("--map-size-rev-nat={}", size(services)),
    ]
}

/// Creates the `n` bench Services and their EndpointSlices at `cluster`
/// (several requests at a time); returns how long that took.
pub fn create(
    cluster: &bpfproxy_tests::cluster::Cluster,
    n: usize,
) -> anyhow::Result<std::time::Duration> {
    cluster
        .apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n")
        .ok();
    let t = std::time::Instant::now();
    let services = (0..n)
        .map(|i| serde_yaml::from_str::<Service>(&service_yaml(i)))
        .collect::<Result<Vec<_>, _>>()?;
    cluster.apply_many(&services, PARALLEL_WRITES)?;
    drop(services);
    let slices = (0..n)
        .map(|i| serde_yaml::from_str::<EndpointSlice>(&slice_yaml(i, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    cluster.apply_many(&slices, PARALLEL_WRITES)?;
    Ok(t.elapsed())
}

/// Writes in flight while creating the bench objects.
const PARALLEL_WRITES: usize = 16;
