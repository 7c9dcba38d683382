//! Keeps of each object only the fields the agent reads, before a source
//! holds on to it. An object from the API server carries `managedFields`
//! (often larger than the rest of it), a status, annotations written by
//! `kubectl apply` and controllers, and a spec of which the proxy reads a
//! fraction; with 10k Services and their EndpointSlices cached, that was
//! most of the agent's memory.
//!
//! Each function keeps a list of what to keep (not of what to drop), so a
//! field added to the API later costs nothing here. The lists follow what
//! the readers use: `model/service.rs` (Services), `model/slices.rs`
//! (EndpointSlices) and `sync.rs` (this Node's zone label, deletion and
//! taints). A reader that starts using another field must add it here; the
//! tests below compare the model's output on original and stripped objects.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, Node, NodeSpec, Service, ServicePort,
            ServiceSpec, ServiceStatus,
        },
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// The label that hands a Service to a named proxy (read by the model).
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label tying an EndpointSlice to its Service (read by the model).
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// When the EndpointSlice controller saw the change a slice carries: the
/// start of the network programming latency metric.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// This Node's zone, for topology hints (read by the sync).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Service reduced to its name, the proxy-name label, the spec fields of
/// its frontends and the load balancer's ingress IPs.
pub fn service(svc: &mut Service) {
    svc.metadata = meta(&mut svc.metadata, &[SERVICE_PROXY_NAME_LABEL], &[]);
    svc.spec = svc.spec.take().map(service_spec);
    svc.status = svc.status.take().and_then(service_status);
}

fn service_spec(mut s: ServiceSpec) -> ServiceSpec {
    ServiceSpec {
        type_: s.type_.take(),
        cluster_ip: s.cluster_ip.take(),
        cluster_ips: s.cluster_ips.take(),
        external_ips: s.external_ips.take(),
        load_balancer_source_ranges: s.load_balancer_source_ranges.take(),
        session_affinity: s.session_affinity.take(),
        session_affinity_config: s.session_affinity_config.take(),
        internal_traffic_policy: s.internal_traffic_policy.take(),
        external_traffic_policy: s.external_traffic_policy.take(),
        health_check_node_port: s.health_check_node_port,
        // The target port comes from the EndpointSlices, not from here.
        ports: s.ports.take().map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    protocol: p.protocol,
                    port: p.port,
                    node_port: p.node_port,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    }
}

/// Only the ingress IPs (and whether the load balancer proxies itself);
/// None when there are none, the common case.
fn service_status(s: ServiceStatus) -> Option<ServiceStatus> {
    let ingress: Vec<LoadBalancerIngress> = s
        .load_balancer?
        .ingress?
        .into_iter()
        .map(|i| LoadBalancerIngress {
            ip: i.ip,
            ip_mode: i.ip_mode,
            ..LoadBalancerIngress::default()
        })
        .collect();
    Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(ingress),
        }),
        ..ServiceStatus::default()
    })
}

/// An EndpointSlice reduced to its name, Service label, trigger time, and
/// the addresses, conditions and topology of its endpoints.
pub fn endpoint_slice(slice: &mut EndpointSlice) {
    slice.metadata = meta(
        &mut slice.metadata,
        &[SERVICE_NAME_LABEL],
        &[TRIGGER_TIME_ANNOTATION],
    );
    if let Some(ports) = &mut slice.ports {
        for p in ports.iter_mut() {
            *p = EndpointPort {
                name: p.name.take(),
                protocol: p.protocol.take(),
                port: p.port,
                app_protocol: None,
            };
        }
    }
    for ep in &mut slice.endpoints {
        *ep = Endpoint {
            addresses: std::mem::take(&mut ep.addresses),
            conditions: ep.conditions.take(),
            node_name: ep.node_name.take(),
            hints: ep.hints.take(),
            ..Endpoint::default()
        };
    }
    // Deserialized vectors grow by doubling; this one lives as long as the
    // slice is cached.
    slice.endpoints.shrink_to_fit();
}

/// This Node reduced to its name, zone label, deletion and taints.
pub fn node(node: &mut Node) {
    let deletion = node.metadata.deletion_timestamp.take();
    node.metadata = meta(&mut node.metadata, &[ZONE_LABEL], &[]);
    node.metadata.deletion_timestamp = deletion;
    node.spec = node.spec.take().map(|s| NodeSpec {
        taints: s.taints,
        ..NodeSpec::default()
    });
    node.status = None;
}

/// Name, namespace, and the listed labels and annotations of `m`.
fn meta(m: &mut ObjectMeta, labels: &[&str], annotations: &[&str]) -> ObjectMeta {
    ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        labels: only(m.labels.take(), labels),
        annotations: only(m.annotations.take(), annotations),
        ..ObjectMeta::default()
    }
}

/// The entries of `map` under `keys`; None when none is there (an empty
/// map still allocates a node).
fn only(map: Option<BTreeMap<String, String>>, keys: &[&str]) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = map?
        .into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests;
