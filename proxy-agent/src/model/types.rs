use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    str::FromStr,
    sync::Arc,
};

use serde::Serialize;

/// A transport protocol a Service port can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IANA number the kernel uses.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proxy_common::proto::TCP,
            Protocol::Udp => proxy_common::proto::UDP,
            Protocol::Sctp => proxy_common::proto::SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            proxy_common::proto::TCP => Some(Protocol::Tcp),
            proxy_common::proto::UDP => Some(Protocol::Udp),
            proxy_common::proto::SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl FromStr for Protocol {
    type Err = ();
    /// Kubernetes spells protocols in upper case; anything else is unknown.
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// kube-proxy's name for one port of one Service: `namespace/name:port`
/// (`namespace/name` when the port is unnamed).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    /// Shared with the Service's key (and the other ports' names).
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: String,
}

impl ServicePortName {
    /// The name as text, like Display but without the formatter: a full
    /// sync renders one per frontend.
    pub fn label(&self) -> String {
        let mut out =
            String::with_capacity(self.namespace.len() + self.name.len() + self.port.len() + 2);
        out.push_str(&self.namespace);
        out.push('/');
        out.push_str(&self.name);
        if !self.port.is_empty() {
            out.push(':');
            out.push_str(&self.port);
        }
        out
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// An address clients connect to: a ClusterIP (later also NodePorts and
/// external addresses) with port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SocketAddr brackets IPv6 addresses: [fd00::1]:80.
        write!(
            f,
            "{}/{}",
            std::net::SocketAddr::new(self.ip, self.port),
            self.protocol
        )
    }
}

/// A backend address: an endpoint's IP with the port the Service port
/// translates to (its targetPort, as the EndpointSlice states it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::net::SocketAddr::new(self.ip, self.port))
    }
}

/// Which address of a Service a frontend is: the kind decides which traffic
/// policy applies and which datapath serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// spec.clusterIPs: internal traffic, socket programs.
    ClusterIp,
    /// spec.ports[].nodePort on the node's addresses; the frontend's IP is
    /// 0.0.0.0 (or :: for IPv6), meaning "any node address".
    NodePort,
    /// spec.externalIPs.
    ExternalIp,
    /// status.loadBalancer.ingress[].ip (not with ipMode Proxy).
    LoadBalancer,
}

impl FrontendKind {
    /// External kinds follow externalTrafficPolicy, ClusterIP follows
    /// internalTrafficPolicy.
    pub fn is_external(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

/// What one frontend needs: whose it is and where it leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendState {
    pub name: ServicePortName,
    pub kind: FrontendKind,
    /// Empty means "reject": the Service exists but has no usable endpoint
    /// (for a `Local` policy: none on this node). Shared by the port's
    /// frontends with the same policy (ClusterIP, NodePort, external IPs
    /// usually hold one set between them).
    pub endpoints: Arc<BTreeSet<Endpoint>>,
    /// sessionAffinity ClientIP timeout; 0 = no affinity.
    pub affinity_timeout_s: u32,
    /// The frontend's traffic policy is `Local` (internal for ClusterIPs,
    /// external for the others): `endpoints` are this node's only, and
    /// external clients keep their address (no SNAT).
    pub policy_local: bool,
    /// Which of `endpoints` run on this node: the TC datapath DNATs to
    /// those without SNAT, since their replies pass this node anyway.
    pub node_local: BTreeSet<Endpoint>,
    /// Whether the Service port has a usable endpoint anywhere in the
    /// cluster: without, traffic is refused; with, but none here under a
    /// Local policy, it is dropped (kube-proxy's REJECT vs DROP).
    pub any_endpoints: bool,
    /// For an external frontend with `externalTrafficPolicy: Local`: the
    /// endpoints pods and node processes use when they address it (the
    /// Service's cluster-wide set, as kube-proxy's rules for in-cluster
    /// traffic to external destinations pick it, whatever the
    /// internalTrafficPolicy). None for every other frontend: in-cluster
    /// clients use `endpoints` like everyone else.
    pub in_cluster: Option<Arc<BTreeSet<Endpoint>>>,
    /// loadBalancerSourceRanges, for LoadBalancer IP frontends only (empty:
    /// anyone may connect).
    pub source_ranges: Vec<crate::node_addrs::Ipv4Cidr>,
}

/// What the model needs to know about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub name: String,
    /// The Node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

/// Settings of the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelConfig {
    pub node: NodeContext,
    /// Services labelled `service.kubernetes.io/service-proxy-name` with this
    /// value are ours; any other value belongs to another proxy.
    pub proxy_name: Option<String>,
    pub budget: Budget,
}

/// What one Service may take of the node's maps: a Service over it is
/// skipped whole (logged and counted), so one tenant's object (hundreds of
/// ports × hundreds of externalIPs) cannot use up the frontend ids and map
/// entries every other Service needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Frontends: ports × (ClusterIPs + NodePort + externalIPs + LB IPs).
    pub frontends_per_service: usize,
    /// Backend slots: ports × endpoints.
    pub backends_per_service: usize,
}

impl Default for Budget {
    /// Far above real Services (kube-dns has 3 frontends; a large ingress
    /// controller a few dozen), far below the 65,536 frontend ids.
    fn default() -> Self {
        Self {
            frontends_per_service: 256,
            backends_per_service: 16_384,
        }
    }
}

/// Every frontend this node must serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, FrontendState>,
}
