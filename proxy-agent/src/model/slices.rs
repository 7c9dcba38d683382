//! EndpointSlices validated into the parts the proxy uses.
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    skip::{skip, SkipReason},
    Protocol, Skip,
};

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One usable port of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint with its conditions (API defaults applied) and topology.
#[derive(Clone, Debug)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    /// Topology hints: zones / nodes this endpoint should serve.
    pub for_zones: Option<Vec<String>>,
    pub for_nodes: Option<Vec<String>>,
}

/// The parts of an EndpointSlice the proxy uses.
#[derive(Clone, Debug)]
pub struct UsableSlice {
    /// IPv6 slices (addressType IPv6) serve IPv6 frontends only.
    pub ipv6: bool,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`, for the network
    /// programming latency metric.
    pub trigger_time: Option<String>,
}

/// The Service label of `slice`, if it has one.
pub fn service_label(slice: &EndpointSlice) -> Option<&str> {
    let labels = slice.metadata.labels.as_ref()?;
    labels.get(SERVICE_NAME_LABEL).map(String::as_str)
}

/// Validates the named EndpointSlice `slice` (`obj` in skips): None
/// (with skips) when it has no Service label, None (silently) for FQDN
/// slices, which kube-proxy ignores too.
pub fn parse_slice(slice: &EndpointSlice, obj: &str, skips: &mut Vec<Skip>) -> Option<UsableSlice> {
    if service_label(slice).is_none() {
        skips.push(skip(
            "EndpointSlice",
            obj,
            SkipReason::MissingServiceNameLabel,
            "",
        ));
        return None;
    }
    let ipv6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        _ => return None,
    };
    let ports = usable_ports(slice, obj, skips);
    let endpoints = usable_endpoints(slice, ipv6, obj, skips);
    let trigger_time = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("endpoints.kubernetes.io/last-change-trigger-time"))
        .cloned();
    Some(UsableSlice {
        ipv6,
        ports,
        endpoints,
        trigger_time,
    })
}

fn usable_ports(slice: &EndpointSlice, obj: &str, skips: &mut Vec<Skip>) -> Vec<SlicePort> {
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        let name = p.name.clone().unwrap_or_default();
        let Some((protocol, port)) = super::usable_port(
            "EndpointSlice",
            obj,
            &name,
            p.protocol.as_deref(),
            p.port,
            skips,
        ) else {
            continue;
        };
        ports.push(SlicePort {
            name,
            protocol,
            port,
        });
    }
    ports.shrink_to_fit();
    ports
}

fn usable_endpoints(
    slice: &EndpointSlice,
    ipv6: bool,
    obj: &str,
    skips: &mut Vec<Skip>,
) -> Vec<SliceEndpoint> {
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for ep in &slice.endpoints {
        // All addresses of an endpoint are fungible; kube-proxy uses the
        // first.
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        // An address of the other family than the slice's is as invalid
        // as a malformed one.
        let Some(ip) = first
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| ip.is_ipv6() == ipv6)
        else {
            skips.push(skip(
                "EndpointSlice",
                obj,
                SkipReason::InvalidEndpointAddress,
                &format!("{first:?}"),
            ));
            continue;
        };
        let cond = ep.conditions.as_ref();
        // API defaults: ready is "unknown → true", serving defaults to
        // ready, terminating to false.
        let ready = cond.and_then(|c| c.ready).unwrap_or(true);
        let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
        let hints = ep.hints.as_ref();
        endpoints.push(SliceEndpoint {
            ip,
            ready,
            serving,
            terminating,
            node_name: ep.node_name.clone(),
            for_zones: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect()),
            for_nodes: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| n.name.clone()).collect()),
        });
    }
    endpoints
}
