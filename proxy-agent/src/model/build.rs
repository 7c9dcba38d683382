//! Services + EndpointSlices → [`DesiredState`], with kube-proxy's rules.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    endpoints::categorize,
    service::{parse_service, ServiceInfo},
    skip::{skip, SkipReason},
    slices::{usable_slices, UsableSlice},
    Budget, DesiredState, Frontend, FrontendKind, FrontendState, ModelConfig, ServicePortName,
    Skip,
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

/// namespace/name without copying (sorting 10k Services by cloned strings
/// cost more than building them).
fn sort_key(s: &Service) -> (Option<&str>, Option<&str>) {
    (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
}

/// Why the Service `info` with `slices` exceeds `budget`, if it does. The
/// counts are upper bounds computed before anything is built (every
/// address family, every slice endpoint), so a hostile object costs no more
/// than counting it.
fn over_budget(info: &ServiceInfo, slices: &[UsableSlice], budget: &Budget) -> Option<String> {
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

/// Computes what every Service needs on this node. Objects that cannot be
/// used are left out with a [`Skip`]; they never affect other Services.
pub fn build_desired_state<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    config: &ModelConfig,
) -> BuildOutput {
    let mut out = BuildOutput::default();
    let slices = usable_slices(slices, &mut out.skips);
    for ((ns, name), list) in &slices {
        if let Some(t) = list.iter().filter_map(|s| s.trigger_time.clone()).max() {
            out.trigger_times.insert(format!("{ns}/{name}"), t);
        }
    }

    // Sorted by namespace/name so that conflicts resolve the same way on
    // every node and every sync.
    let mut sorted: Vec<&Service> = services.into_iter().collect();
    sorted.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));

    let no_slices: Vec<UsableSlice> = Vec::new();
    for svc in sorted {
        let Some(info) = parse_service(svc, config, &mut out.skips) else {
            continue;
        };
        let obj = format!("{}/{}", info.namespace, info.name);
        let own_slices = slices
            .get(&(info.namespace.to_string(), info.name.to_string()))
            .unwrap_or(&no_slices);
        if let Some(why) = over_budget(&info, own_slices, &config.budget) {
            out.skips
                .push(skip("Service", &obj, SkipReason::OverBudget, &why));
            continue;
        }

        for port in &info.ports {
            let spn = ServicePortName {
                namespace: info.namespace.to_string(),
                name: info.name.to_string(),
                port: port.name.clone(),
            };
            // Each IP family has its own slices and frontends (dual-stack).
            for ipv6 in [false, true] {
                let family = |ip: &&IpAddr| ip.is_ipv6() == ipv6;
                let cluster_ips: Vec<IpAddr> =
                    info.cluster_ips.iter().filter(family).copied().collect();
                if cluster_ips.is_empty() {
                    continue; // the Service does not have this family
                }
                let mut eps = categorize(own_slices, &port.name, port.protocol, ipv6, &config.node);
                for set in [&mut eps.cluster, &mut eps.local] {
                    if set.len() > MAX_ENDPOINTS_PER_FRONTEND {
                        out.skips.push(skip(
                            "Service",
                            &obj,
                            SkipReason::TooManyEndpoints,
                            &format!("{} endpoints for port {:?}", set.len(), port.name),
                        ));
                        *set = std::mem::take(set)
                            .into_iter()
                            .take(MAX_ENDPOINTS_PER_FRONTEND)
                            .collect();
                    }
                }
                let any_node_ip = if ipv6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                };
                let mut frontends: Vec<(IpAddr, u16, FrontendKind)> = Vec::new();
                frontends.extend(
                    cluster_ips
                        .iter()
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
                let has_external = frontends.iter().any(|(_, _, k)| k.is_external());
                if let Some(port) = info.health_check_node_port {
                    let hc = out
                        .health_checks
                        .entry(port)
                        .or_insert_with(|| HealthCheck {
                            namespace: info.namespace.to_string(),
                            name: info.name.to_string(),
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
                for (ip, number, kind) in frontends {
                    let frontend = Frontend {
                        ip,
                        port: number,
                        protocol: port.protocol,
                    };
                    if let Some(owner) = out.state.frontends.get(&frontend) {
                        // A ClusterIP always wins over another Service's
                        // externalIP or LB IP on the same address (the
                        // CVE-2020-8554 shape: a tenant's externalIP must not
                        // capture someone else's ClusterIP); otherwise the
                        // first by namespace/name keeps it.
                        if !(kind == FrontendKind::ClusterIp && owner.kind.is_external()) {
                            out.skips.push(skip(
                                "Service",
                                &obj,
                                SkipReason::DuplicateFrontend,
                                &format!("{frontend} already belongs to {}", owner.name),
                            ));
                            continue;
                        }
                        let loser = format!("{}/{}", owner.name.namespace, owner.name.name);
                        out.skips.push(skip(
                            "Service",
                            &loser,
                            SkipReason::DuplicateFrontend,
                            &format!("{frontend} is {}'s ClusterIP", spn),
                        ));
                    }
                    // ClusterIPs follow internalTrafficPolicy, the external
                    // kinds externalTrafficPolicy.
                    let local = if kind.is_external() {
                        info.external_local
                    } else {
                        info.internal_local
                    };
                    let endpoints = if local { &eps.local } else { &eps.cluster };
                    let node_local = endpoints.intersection(&eps.local).copied().collect();
                    let in_cluster = (local && kind.is_external()).then(|| eps.cluster.clone());
                    out.state.frontends.insert(
                        frontend,
                        FrontendState {
                            name: spn.clone(),
                            kind,
                            endpoints: endpoints.clone(),
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
                        },
                    );
                }
            }
        }
    }
    out.skips.sort();
    out
}
