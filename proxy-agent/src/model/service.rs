//! A Service validated into the parts the proxy uses.
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use crate::node_addrs::Ipv4Cidr;

use super::{
    skip::{skip, SkipReason},
    Protocol, Skip,
};

/// kube-proxy's default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The API server's upper bound for timeoutSeconds (1 day).
const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

#[derive(Clone, Debug)]
pub struct PortInfo {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// What the proxy uses of a Service (its name is kept beside it, in
/// [`super::ServiceObject`]).
#[derive(Clone, Debug)]
pub struct ServiceInfo {
    /// Both families of a dual-stack Service; IPv6 is modelled, and left
    /// out when rendering until the datapath has IPv6 programs.
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// spec.loadBalancerSourceRanges (IPv4 ones; IPv6 waits for the IPv6
    /// datapath): who may reach the LoadBalancer IPs.
    pub source_ranges: Vec<Ipv4Cidr>,
    pub internal_local: bool,
    pub external_local: bool,
    pub affinity_timeout_s: u32,
    pub ports: Vec<PortInfo>,
    /// spec.healthCheckNodePort, kept only with externalTrafficPolicy Local
    /// (the API server allocates it for LoadBalancer Services then).
    pub health_check_node_port: Option<u16>,
}

/// The proxy-relevant view of `svc` (named `obj` in skips), or None when
/// there is nothing to program (headless, ExternalName, no ClusterIP yet)
/// or it is unusable (with a skip saying why). Whose proxy the Service is
/// for is the caller's question: it depends on the agent's settings.
pub fn parse_service(svc: &Service, obj: &str, skips: &mut Vec<Skip>) -> Option<ServiceInfo> {
    let Some(spec) = &svc.spec else {
        skips.push(skip("Service", obj, SkipReason::MissingSpec, ""));
        return None;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    // clusterIPs (dual-stack) lists clusterIP first; older objects may only
    // have clusterIP.
    let raw: Vec<&str> = match &spec.cluster_ips {
        Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    // Headless ("None") or not allocated yet: nothing to program.
    if raw.is_empty() || raw.iter().any(|ip| ip.is_empty() || *ip == "None") {
        return None;
    }
    let cluster_ips = parse_ips(raw, obj, SkipReason::InvalidClusterIp, skips)?;
    // A bad external address costs only that address.
    let external_ips = external_addresses(
        spec.external_ips.iter().flatten().map(String::as_str),
        obj,
        SkipReason::InvalidExternalIp,
        skips,
    );
    let load_balancer_ips = load_balancer_ips(svc, obj, skips);
    let source_ranges = source_ranges(
        spec.load_balancer_source_ranges.iter().flatten(),
        obj,
        skips,
    );
    let affinity_timeout_s = if spec.session_affinity.as_deref() == Some("ClientIP") {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map(|t| t.clamp(1, MAX_AFFINITY_TIMEOUT_S as i32) as u32)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
    } else {
        0
    };
    let has_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let mut ports = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let port_name = sp.name.clone().unwrap_or_default();
        let Some((protocol, port)) = super::usable_port(
            "Service",
            obj,
            &port_name,
            sp.protocol.as_deref(),
            Some(sp.port),
            skips,
        ) else {
            continue;
        };
        let node_port = if has_node_ports {
            sp.node_port.and_then(super::valid_port)
        } else {
            None
        };
        ports.push(PortInfo {
            name: port_name,
            protocol,
            port,
            node_port,
        });
    }
    // Kept as long as the Service is: no spare capacity.
    ports.shrink_to_fit();
    Some(ServiceInfo {
        cluster_ips,
        external_ips,
        load_balancer_ips,
        source_ranges,
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        affinity_timeout_s,
        ports,
        health_check_node_port: spec
            .health_check_node_port
            .and_then(super::valid_port)
            .filter(|_| spec.external_traffic_policy.as_deref() == Some("Local")),
    })
}

/// The addresses in `raw`; None (with a skip) if any is not an address.
fn parse_ips<'r>(
    raw: impl IntoIterator<Item = &'r str>,
    obj: &str,
    reason: SkipReason,
    skips: &mut Vec<Skip>,
) -> Option<Vec<IpAddr>> {
    let mut ips = Vec::new();
    for text in raw {
        match text.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => {
                skips.push(skip("Service", obj, reason, &format!("{text:?}")));
                return None;
            }
        }
    }
    ips.shrink_to_fit();
    Some(ips)
}

/// status.loadBalancer.ingress IPs that traffic is really addressed to.
/// With `ipMode: Proxy` the load balancer proxies to the nodes itself, so
/// kube-proxy must not capture that IP (KEP-1860).
fn load_balancer_ips(svc: &Service, obj: &str, skips: &mut Vec<Skip>) -> Vec<IpAddr> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let ingress = ingress
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref().filter(|ip| !ip.is_empty()));
    external_addresses(ingress, obj, SkipReason::InvalidLoadBalancerIp, skips)
}

/// The IPv4 CIDRs of loadBalancerSourceRanges. A bad entry is skipped and
/// counted; the others still restrict (a typo must not open the Service to
/// everyone, nor close it to the ranges that are right).
fn source_ranges<'r>(
    raw: impl IntoIterator<Item = &'r String>,
    obj: &str,
    skips: &mut Vec<Skip>,
) -> Vec<Ipv4Cidr> {
    let mut out = Vec::new();
    for text in raw {
        let text = text.trim();
        match text.parse::<Ipv4Cidr>() {
            Ok(c) => out.push(c),
            // An IPv6 range is valid, only not for the IPv4 datapath.
            Err(_) if text.contains(':') => {}
            Err(_) => skips.push(skip(
                "Service",
                obj,
                SkipReason::InvalidSourceRange,
                &format!("{text:?}"),
            )),
        }
    }
    out
}

/// The usable ones of externalIPs or LB IPs: a bad address costs only
/// itself (with a skip).
fn external_addresses<'r>(
    raw: impl IntoIterator<Item = &'r str>,
    obj: &str,
    reason: SkipReason,
    skips: &mut Vec<Skip>,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for text in raw {
        if let Some(ips) = parse_ips([text], obj, reason, skips) {
            out.extend(
                ips.into_iter()
                    .filter(|ip| routable(*ip, obj, reason, skips)),
            );
        }
    }
    out
}

/// Whether `ip` can be an externalIP or LoadBalancer IP: an address traffic
/// from outside is routed to. The unspecified address would act as a
/// wildcard over every node address; broadcast, multicast, loopback and
/// link-local ones (169.254/16 is the cloud metadata service) would let a
/// tenant capture traffic that is not theirs. Refused with a skip.
fn routable(ip: IpAddr, obj: &str, reason: SkipReason, skips: &mut Vec<Skip>) -> bool {
    let special = match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_loopback()
                || v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_loopback()
                || v6.is_unicast_link_local()
                || v6.to_ipv4_mapped().is_some()
        }
    };
    if special {
        skips.push(skip(
            "Service",
            obj,
            reason,
            &format!("{ip} is not a routable address"),
        ));
    }
    !special
}
