//! The demo's Services: one description per Service, from which its
//! manifest, the frontends every agent must program and the `kubectl get
//! svc`-like table are all derived, so they cannot disagree.

use bpfproxy_tests::manifest::{self, Endpoint};
use bpfproxy_tests::multinode::{node_port_service, pod_endpoint, pod_ip};

use super::layout::Layout;
use super::report::plural;

/// `type: NodePort`, `externalTrafficPolicy: Cluster`.
pub(super) const WEB: &str = "default/web";
pub(super) const WEB_IP: &str = "10.96.0.20";
pub(super) const WEB_NODE_PORT: u16 = 30080;
/// The same pods behind `externalTrafficPolicy: Local`.
pub(super) const WEB_LOCAL: &str = "default/web-local";
const WEB_LOCAL_IP: &str = "10.96.0.21";
pub(super) const WEB_LOCAL_NODE_PORT: u16 = 30081;
/// UDP on port 53, where kubeadm puts kube-dns.
pub(super) const DNS: &str = "kube-system/kube-dns";
pub(super) const DNS_IP: &str = "10.96.0.10";
pub(super) const DNS_PORT: u16 = 53;
/// Where every server of the sandbox listens (HTTP and UDP).
pub(super) const SERVER_HTTP_PORT: u16 = 8080;
pub(super) const SERVER_UDP_PORT: u16 = 5353;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Etp {
    Cluster,
    Local,
}

impl Etp {
    fn as_str(self) -> &'static str {
        match self {
            Etp::Cluster => "Cluster",
            Etp::Local => "Local",
        }
    }
}

/// One single-port Service and its endpoints: the one source of its
/// manifest, of the frontends every agent must program and of the table.
#[derive(Debug, Clone)]
pub(super) struct DemoService {
    /// `namespace/name`.
    pub(super) name: &'static str,
    cluster_ip: &'static str,
    port_name: &'static str,
    port: u16,
    target_port: u16,
    protocol: &'static str,
    /// NodePort and external traffic policy; `None` for type ClusterIP.
    node_port: Option<(u16, Etp)>,
    /// `(node, pod)` of each endpoint.
    endpoints: Vec<(usize, usize)>,
}

/// A frontend an agent must have programmed, as `bpfproxy dump` shows it.
#[derive(Debug, Clone)]
pub(super) struct Frontend {
    pub(super) vip: String,
    pub(super) port: u16,
    pub(super) protocol: &'static str,
    /// `ip:port`.
    pub(super) backends: Vec<String>,
}

impl DemoService {
    /// web (eTP=Cluster), web-local (eTP=Local) and kube-dns, each with
    /// every backend of `layout` as its endpoints.
    pub(super) fn all(layout: Layout) -> Vec<DemoService> {
        let backends = layout.backend_pods();
        let web = |name, cluster_ip, node_port| DemoService {
            name,
            cluster_ip,
            port_name: "http",
            port: 80,
            target_port: SERVER_HTTP_PORT,
            protocol: "TCP",
            node_port,
            endpoints: backends.clone(),
        };
        vec![
            web(WEB, WEB_IP, Some((WEB_NODE_PORT, Etp::Cluster))),
            web(
                WEB_LOCAL,
                WEB_LOCAL_IP,
                Some((WEB_LOCAL_NODE_PORT, Etp::Local)),
            ),
            DemoService {
                name: DNS,
                cluster_ip: DNS_IP,
                port_name: "dns",
                port: DNS_PORT,
                target_port: SERVER_UDP_PORT,
                protocol: "UDP",
                node_port: None,
                endpoints: backends.clone(),
            },
        ]
    }

    /// The Service and its EndpointSlice (each endpoint with its nodeName).
    pub(super) fn manifest(&self) -> String {
        let service = match self.node_port {
            Some((node_port, etp)) => node_port_service(
                self.name,
                self.cluster_ip,
                &[(
                    self.port_name,
                    self.port,
                    self.target_port,
                    self.protocol,
                    node_port,
                )],
                etp.as_str(),
            ),
            None => manifest::service(
                self.name,
                self.cluster_ip,
                &[(self.port_name, self.port, self.target_port, self.protocol)],
            ),
        };
        let endpoints: Vec<Endpoint> = self
            .endpoints
            .iter()
            .map(|&(i, j)| pod_endpoint(i, j))
            .collect();
        let slice = format!("{}-1", self.short_name());
        manifest::documents(&[
            service,
            manifest::endpoint_slice_with(
                self.name,
                &slice,
                &endpoints,
                &[(self.port_name, self.target_port, self.protocol)],
            ),
        ])
    }

    pub(super) fn short_name(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(self.name)
    }

    fn addr(&self, (i, j): (usize, usize)) -> String {
        format!("{}:{}", pod_ip(i, j), self.target_port)
    }

    /// What node `node`'s agent must program: the ClusterIP with every
    /// endpoint; the NodePort (`0.0.0.0` in the dump) with every endpoint,
    /// or only the node's own for eTP=Local.
    pub(super) fn frontends_on(&self, node: usize) -> Vec<Frontend> {
        let all: Vec<String> = self.endpoints.iter().map(|&e| self.addr(e)).collect();
        let mut v = vec![Frontend {
            vip: self.cluster_ip.to_string(),
            port: self.port,
            protocol: self.protocol,
            backends: all.clone(),
        }];
        if let Some((node_port, etp)) = self.node_port {
            let backends = match etp {
                Etp::Cluster => all,
                Etp::Local => self
                    .endpoints
                    .iter()
                    .filter(|&&(i, _)| i == node)
                    .map(|&e| self.addr(e))
                    .collect(),
            };
            v.push(Frontend {
                vip: "0.0.0.0".to_string(),
                port: node_port,
                protocol: self.protocol,
                backends,
            });
        }
        v
    }

    /// A `kubectl get svc` line.
    pub(super) fn table_row(&self) -> String {
        let (type_, ports, etp) = match self.node_port {
            Some((np, etp)) => (
                "NodePort",
                format!("{}:{np}/{}", self.port, self.protocol),
                etp.as_str(),
            ),
            None => ("ClusterIP", format!("{}/{}", self.port, self.protocol), "-"),
        };
        format!(
            "{:<22} {type_:<10} {:<11} {ports:<15} {etp:<8} {} -> :{}",
            self.name,
            self.cluster_ip,
            plural(self.endpoints.len(), "endpoint"),
            self.target_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::layout::LAYOUT;

    #[test]
    fn etp_local_node_ports_have_only_the_nodes_own_backends() {
        let services = DemoService::all(LAYOUT);
        let local = services.iter().find(|s| s.name == WEB_LOCAL).unwrap();
        let node_port = |node| {
            local
                .frontends_on(node)
                .into_iter()
                .find(|f| f.vip == "0.0.0.0")
                .unwrap()
                .backends
        };
        assert_eq!(node_port(1), ["10.244.1.2:8080", "10.244.1.3:8080"]);
        assert!(node_port(3).is_empty());
        // The ClusterIP keeps every endpoint.
        assert_eq!(local.frontends_on(3)[0].backends.len(), 4);
    }

    #[test]
    fn cluster_ip_services_have_no_node_port_frontend() {
        let services = DemoService::all(LAYOUT);
        let dns = services.iter().find(|s| s.name == DNS).unwrap();
        let f = dns.frontends_on(1);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].vip.as_str(), f[0].port, f[0].protocol),
            (DNS_IP, 53, "UDP")
        );
        assert_eq!(f[0].backends[0], "10.244.1.2:5353");
    }
}
