//! Services + EndpointSlices → [`DesiredState`], with kube-proxy's rules.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    DesiredState, Endpoint, Frontend, FrontendState, Protocol, ServicePortName, Skip, SkipReason,
};

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services carrying this label belong to another proxy (kube-proxy ignores
/// them too).
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// A frontend's slot index is a u16 and slot 0 is the master entry.
const MAX_ENDPOINTS_PER_FRONTEND: usize = u16::MAX as usize;

/// The desired state and everything that had to be left out of it.
#[derive(Debug, Default)]
pub struct BuildOutput {
    pub state: DesiredState,
    pub skips: Vec<Skip>,
}

/// One usable port of an EndpointSlice.
struct SlicePort {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// One endpoint of an EndpointSlice with its conditions, API defaults applied.
struct SliceEndpoint {
    ip: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// The parts of an EndpointSlice the proxy uses, validated.
struct UsableSlice {
    ports: Vec<SlicePort>,
    endpoints: Vec<SliceEndpoint>,
}

/// Computes what every Service needs. Objects that cannot be used are left
/// out with a [`Skip`]; they never affect other Services.
pub fn build_desired_state(services: &[Service], slices: &[EndpointSlice]) -> BuildOutput {
    let mut out = BuildOutput::default();
    let slices = usable_slices(slices, &mut out.skips);

    // Sorted by namespace/name so that conflicts resolve the same way on
    // every node and every sync.
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| object_name(&s.metadata));

    for svc in sorted {
        let Some((namespace, name)) = namespaced_name(&svc.metadata) else {
            out.skips
                .push(skip("Service", "<unnamed>", SkipReason::MissingName, ""));
            continue;
        };
        let obj = format!("{namespace}/{name}");
        let Some(ips) = service_ips(svc, &obj, &mut out.skips) else {
            continue;
        };
        let Some(spec) = &svc.spec else { continue };
        let no_slices = Vec::new();
        let own_slices = slices
            .get(&(namespace.to_string(), name.to_string()))
            .unwrap_or(&no_slices);

        for sp in spec.ports.iter().flatten() {
            let port_name = sp.name.clone().unwrap_or_default();
            let Ok(protocol) = sp.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() else {
                out.skips.push(skip(
                    "Service",
                    &obj,
                    SkipReason::UnknownProtocol,
                    &format!("port {port_name:?} protocol {:?}", sp.protocol),
                ));
                continue;
            };
            let Some(port) = valid_port(sp.port) else {
                out.skips.push(skip(
                    "Service",
                    &obj,
                    SkipReason::InvalidPort,
                    &format!("port {port_name:?} number {}", sp.port),
                ));
                continue;
            };
            let spn = ServicePortName {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port: port_name.clone(),
            };
            let mut endpoints = select_endpoints(own_slices, &port_name, protocol);
            if endpoints.len() > MAX_ENDPOINTS_PER_FRONTEND {
                out.skips.push(skip(
                    "Service",
                    &obj,
                    SkipReason::TooManyEndpoints,
                    &format!("{} endpoints for port {port_name:?}", endpoints.len()),
                ));
                endpoints = endpoints
                    .into_iter()
                    .take(MAX_ENDPOINTS_PER_FRONTEND)
                    .collect();
            }
            for ip in &ips {
                let frontend = Frontend {
                    ip: *ip,
                    port,
                    protocol,
                };
                if let Some(owner) = out.state.frontends.get(&frontend) {
                    out.skips.push(skip(
                        "Service",
                        &obj,
                        SkipReason::DuplicateFrontend,
                        &format!("{frontend} already belongs to {}", owner.name),
                    ));
                    continue;
                }
                out.state.frontends.insert(
                    frontend,
                    FrontendState {
                        name: spn.clone(),
                        endpoints: endpoints.clone(),
                    },
                );
            }
        }
    }
    out.skips.sort();
    out
}

/// The IPv4 ClusterIPs of a Service the proxy handles, or None when it is
/// not ours to handle (headless, ExternalName, another proxy's) or unusable.
fn service_ips(svc: &Service, obj: &str, skips: &mut Vec<Skip>) -> Option<Vec<Ipv4Addr>> {
    let labels = svc.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return None;
    }
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
    let mut v4 = Vec::new();
    let mut saw_v6 = false;
    for text in raw {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => v4.push(ip),
            Ok(IpAddr::V6(_)) => saw_v6 = true,
            Err(_) => {
                skips.push(skip(
                    "Service",
                    obj,
                    SkipReason::InvalidClusterIp,
                    &format!("{text:?}"),
                ));
                return None;
            }
        }
    }
    if v4.is_empty() && saw_v6 {
        skips.push(skip("Service", obj, SkipReason::Ipv6NotSupported, ""));
        return None;
    }
    Some(v4)
}

/// Ready endpoints serving `port_name/protocol`; when none is ready, the
/// serving-and-terminating ones (KEP-1669), so a Service whose pods are all
/// shutting down keeps answering instead of failing.
fn select_endpoints(
    slices: &[UsableSlice],
    port_name: &str,
    protocol: Protocol,
) -> BTreeSet<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        for sp in slice
            .ports
            .iter()
            .filter(|p| p.name == port_name && p.protocol == protocol)
        {
            for ep in &slice.endpoints {
                let endpoint = Endpoint {
                    ip: ep.ip,
                    port: sp.port,
                };
                if ep.ready {
                    ready.insert(endpoint);
                } else if ep.serving && ep.terminating {
                    terminating.insert(endpoint);
                }
            }
        }
    }
    if ready.is_empty() {
        terminating
    } else {
        ready
    }
}

/// Validates EndpointSlices and groups them by (namespace, service name).
fn usable_slices(
    slices: &[EndpointSlice],
    skips: &mut Vec<Skip>,
) -> BTreeMap<(String, String), Vec<UsableSlice>> {
    let mut by_service: BTreeMap<(String, String), Vec<UsableSlice>> = BTreeMap::new();
    for slice in slices {
        let Some((namespace, name)) = namespaced_name(&slice.metadata) else {
            skips.push(skip(
                "EndpointSlice",
                "<unnamed>",
                SkipReason::MissingName,
                "",
            ));
            continue;
        };
        let obj = format!("{namespace}/{name}");
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            skips.push(skip(
                "EndpointSlice",
                &obj,
                SkipReason::MissingServiceNameLabel,
                "",
            ));
            continue;
        };
        // IPv6 slices belong to the IPv6 family (not programmed yet); FQDN
        // slices are ignored by kube-proxy too. Neither is an error.
        if slice.address_type != "IPv4" {
            continue;
        }
        let mut ports = Vec::new();
        for p in slice.ports.iter().flatten() {
            let name = p.name.clone().unwrap_or_default();
            let Ok(protocol) = p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() else {
                skips.push(skip(
                    "EndpointSlice",
                    &obj,
                    SkipReason::UnknownProtocol,
                    &format!("port {name:?} protocol {:?}", p.protocol),
                ));
                continue;
            };
            let Some(port) = p.port.and_then(valid_port) else {
                skips.push(skip(
                    "EndpointSlice",
                    &obj,
                    SkipReason::InvalidPort,
                    &format!("port {name:?} number {:?}", p.port),
                ));
                continue;
            };
            ports.push(SlicePort {
                name,
                protocol,
                port,
            });
        }
        let mut endpoints = Vec::new();
        for ep in &slice.endpoints {
            // All addresses of an endpoint are fungible; kube-proxy uses
            // the first.
            let Some(first) = ep.addresses.first() else {
                continue;
            };
            let Ok(ip) = first.parse::<Ipv4Addr>() else {
                skips.push(skip(
                    "EndpointSlice",
                    &obj,
                    SkipReason::InvalidEndpointAddress,
                    &format!("{first:?}"),
                ));
                continue;
            };
            let cond = ep.conditions.as_ref();
            // API defaults: ready and serving are "unknown → true",
            // terminating "unknown → false"; serving defaults to ready.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            endpoints.push(SliceEndpoint {
                ip,
                ready,
                serving,
                terminating,
            });
        }
        by_service
            .entry((namespace.to_string(), service.clone()))
            .or_default()
            .push(UsableSlice { ports, endpoints });
    }
    by_service
}

fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn namespaced_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(&str, &str)> {
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    Some((meta.namespace.as_deref().unwrap_or("default"), name))
}

fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

fn skip(kind: &'static str, object: &str, reason: SkipReason, detail: &str) -> Skip {
    Skip {
        kind,
        object: object.to_string(),
        reason,
        detail: detail.to_string(),
    }
}
