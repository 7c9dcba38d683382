//! Services + EndpointSlices → [`DesiredState`], with kube-proxy's rules.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    endpoints::categorize,
    objects::{service_objects, slice_objects, ServiceObject},
    service::{PortInfo, ServiceInfo},
    skip::{skip, SkipReason},
    slices::UsableSlice,
    Budget, DesiredState, Frontend, FrontendKind, FrontendState, Model, ModelConfig,
    ServicePortName, ServiceRef, Skip,
};

/// A frontend's slot index is a u16 and slot 0 is the master entry.
const MAX_ENDPOINTS_PER_FRONTEND: usize = u16::MAX as usize;

/// The desired state, what had to be left out of it, and what the metrics
/// report about it.
#[derive(Debug, Default)]
pub struct BuildOutput {
    pub state: DesiredState,
    pub skips: Vec<Skip>,
    /// Service ports whose internal (resp. external) traffic policy is
    /// Local and which have endpoints, but none on this node
    /// (kube-proxy's `sync_proxy_rules_no_local_endpoints_total`).
    pub no_local_endpoints_internal: usize,
    pub no_local_endpoints_external: usize,
    /// Per Service (`namespace/name`), the newest
    /// `endpoints.kubernetes.io/last-change-trigger-time` of its slices.
    pub trigger_times: BTreeMap<String, String>,
    /// healthCheckNodePort → the Service and its endpoints on this node,
    /// for the load-balancer health check servers.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

/// What a Service's healthCheckNodePort reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints on this node, the most of any of the Service's
    /// ports, as kube-proxy reports them: serving-terminating ones do not
    /// count, so a load balancer drains a node whose pods all terminate.
    pub local_endpoints: usize,
}

/// What one Service asks of this node: its frontends in the order it
/// claims them, before they are weighed against other Services' claims on
/// the same address ([`super::Model`] does that).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceBuild {
    pub claims: Vec<(Frontend, FrontendState)>,
    pub skips: Vec<Skip>,
    /// The newest `endpoints.kubernetes.io/last-change-trigger-time` of
    /// the Service's slices.
    pub trigger_time: Option<String>,
    pub health_checks: BTreeMap<u16, HealthCheck>,
    pub no_local_endpoints_internal: usize,
    pub no_local_endpoints_external: usize,
}

/// Why the Service `info` with `slices` exceeds `budget`, if it does. The
/// counts are upper bounds computed before anything is built (every
/// address family, every slice endpoint), so a hostile object costs no more
/// than counting it.
fn over_budget(info: &ServiceInfo, slices: &[&UsableSlice], budget: &Budget) -> Option<String> {
    let ports = info.ports.len();
    let addresses = info.cluster_ips.len() + info.external_ips.len() + info.load_balancer_ips.len();
    let node_ports = info.ports.iter().filter(|p| p.node_port.is_some()).count();
    let frontends = ports * addresses + node_ports;
    if frontends > budget.frontends_per_service {
        return Some(format!(
            "{frontends} frontends ({ports} ports × {addresses} addresses + {node_ports} NodePorts) \
             exceed the budget of {} (--max-frontends-per-service)",
            budget.frontends_per_service
        ));
    }
    let endpoints: usize = slices.iter().map(|s| s.endpoints.len()).sum();
    let slots = frontends.saturating_mul(endpoints);
    (slots > budget.backends_per_service).then(|| {
        format!(
            "{slots} backend slots ({frontends} frontends × {endpoints} endpoints) exceed the \
             budget of {} (--max-backends-per-service)",
            budget.backends_per_service
        )
    })
}

/// Computes what every Service needs on this node from API objects.
/// Objects that cannot be used are left out with a [`Skip`]; they never
/// affect other Services.
pub fn build_desired_state<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    config: &ModelConfig,
) -> BuildOutput {
    let (services, slices) = (service_objects(services), slice_objects(slices));
    Model::build(
        services.iter().map(AsRef::as_ref),
        slices.iter().map(AsRef::as_ref),
        config,
    )
    .output()
}

/// What the Service `key` (`svc`) asks of this node given its usable
/// slices `own_slices`, before its frontends are weighed against other
/// Services' claims.
pub fn build_service(
    key: &ServiceRef,
    svc: &ServiceObject,
    own_slices: &[&UsableSlice],
    config: &ModelConfig,
) -> ServiceBuild {
    let mut out = ServiceBuild {
        trigger_time: own_slices
            .iter()
            .filter_map(|s| s.trigger_time.clone())
            .max(),
        ..ServiceBuild::default()
    };
    let (info, skips) = svc.parsed(config);
    out.skips.extend_from_slice(skips);
    let Some(info) = info else {
        return out;
    };
    if let Some(why) = over_budget(info, own_slices, &config.budget) {
        let obj = format!("{}/{}", key.0, key.1);
        out.skips
            .push(skip("Service", &obj, SkipReason::OverBudget, &why));
        return out;
    }
    for port in &info.ports {
        // Each IP family has its own slices and frontends (dual-stack).
        for ipv6 in [false, true] {
            build_port(&mut out, (key, info), port, ipv6, own_slices, config);
        }
    }
    // The build is kept until the Service changes: no spare capacity.
    out.claims.shrink_to_fit();
    out
}

/// The frontends of one port of one address family of a Service.
fn build_port(
    out: &mut ServiceBuild,
    (key, info): (&ServiceRef, &ServiceInfo),
    port: &PortInfo,
    ipv6: bool,
    own_slices: &[&UsableSlice],
    config: &ModelConfig,
) {
    let family = |ip: &&IpAddr| ip.is_ipv6() == ipv6;
    if !info.cluster_ips.iter().any(|ip| family(&ip)) {
        return; // the Service does not have this family
    }
    let spn = ServicePortName {
        namespace: key.0.clone(),
        name: key.1.clone(),
        port: port.name.clone(),
    };
    let mut eps = categorize(own_slices, &port.name, port.protocol, ipv6, &config.node);
    for set in [&mut eps.cluster, &mut eps.local] {
        if set.len() > MAX_ENDPOINTS_PER_FRONTEND {
            out.skips.push(skip(
                "Service",
                &format!("{}/{}", key.0, key.1),
                SkipReason::TooManyEndpoints,
                &format!("{} endpoints for port {:?}", set.len(), port.name),
            ));
            *set = std::mem::take(set)
                .into_iter()
                .take(MAX_ENDPOINTS_PER_FRONTEND)
                .collect();
        }
    }
    let frontends = frontends_of(info, port, ipv6);
    let has_external = frontends.iter().any(|(_, _, k)| k.is_external());
    if let Some(hc_port) = info.health_check_node_port {
        let hc = out
            .health_checks
            .entry(hc_port)
            .or_insert_with(|| HealthCheck {
                namespace: key.0.to_string(),
                name: key.1.to_string(),
                local_endpoints: 0,
            });
        hc.local_endpoints = hc.local_endpoints.max(eps.local_ready);
    }
    if eps.any && eps.local.is_empty() {
        if info.internal_local {
            out.no_local_endpoints_internal += 1;
        }
        if info.external_local && has_external {
            out.no_local_endpoints_external += 1;
        }
    }
    // One copy of each endpoint set for all of the port's frontends.
    let cluster = Arc::new(std::mem::take(&mut eps.cluster));
    let local_set = Arc::new(std::mem::take(&mut eps.local));
    for (ip, number, kind) in frontends {
        let frontend = Frontend {
            ip,
            port: number,
            protocol: port.protocol,
        };
        // ClusterIPs follow internalTrafficPolicy, the external kinds
        // externalTrafficPolicy.
        let local = if kind.is_external() {
            info.external_local
        } else {
            info.internal_local
        };
        let endpoints = if local { &local_set } else { &cluster };
        let node_local = endpoints.intersection(&local_set).copied().collect();
        let in_cluster = (local && kind.is_external()).then(|| Arc::clone(&cluster));
        let state = FrontendState {
            name: spn.clone(),
            kind,
            endpoints: Arc::clone(endpoints),
            affinity_timeout_s: info.affinity_timeout_s,
            policy_local: local,
            node_local,
            any_endpoints: eps.any,
            in_cluster,
            source_ranges: if kind == FrontendKind::LoadBalancer {
                info.source_ranges.clone()
            } else {
                Vec::new()
            },
        };
        out.claims.push((frontend, state));
    }
}

/// Every frontend of `port` in one address family, in the order the
/// Service claims them: ClusterIPs, the NodePort, externalIPs, LB IPs.
fn frontends_of(
    info: &ServiceInfo,
    port: &PortInfo,
    ipv6: bool,
) -> Vec<(IpAddr, u16, FrontendKind)> {
    let family = |ip: &&IpAddr| ip.is_ipv6() == ipv6;
    let any_node_ip = if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let mut frontends: Vec<(IpAddr, u16, FrontendKind)> = Vec::new();
    frontends.extend(
        info.cluster_ips
            .iter()
            .filter(family)
            .map(|ip| (*ip, port.port, FrontendKind::ClusterIp)),
    );
    if let Some(np) = port.node_port {
        frontends.push((any_node_ip, np, FrontendKind::NodePort));
    }
    frontends.extend(
        info.external_ips
            .iter()
            .filter(family)
            .map(|ip| (*ip, port.port, FrontendKind::ExternalIp)),
    );
    frontends.extend(
        info.load_balancer_ips
            .iter()
            .filter(family)
            .map(|ip| (*ip, port.port, FrontendKind::LoadBalancer)),
    );
    frontends
}
