use std::fmt;

/// Why an object (or a part of one) could not be used. The label value of
/// the `bpfproxy_skipped_objects_total` metric is [`SkipReason::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The document is not valid YAML/JSON or not a valid object of its kind.
    Unparsable,
    /// A kind this source does not handle.
    UnsupportedKind,
    /// The object has no metadata.name.
    MissingName,
    /// spec is missing.
    MissingSpec,
    /// spec.clusterIP is not an IP address.
    InvalidClusterIp,
    /// An entry of spec.externalIPs is not an IP address.
    InvalidExternalIp,
    /// A status.loadBalancer.ingress IP is not an IP address.
    InvalidLoadBalancerIp,
    /// An entry of spec.loadBalancerSourceRanges is not a CIDR.
    InvalidSourceRange,
    /// A port number outside 1..=65535.
    InvalidPort,
    /// A protocol other than TCP, UDP, SCTP.
    UnknownProtocol,
    /// An endpoint address that is not an IPv4 address.
    InvalidEndpointAddress,
    /// An EndpointSlice without the `kubernetes.io/service-name` label.
    MissingServiceNameLabel,
    /// Another Service already claimed the same address, port and protocol.
    DuplicateFrontend,
    /// A second object of the same kind, namespace and name (two manifest
    /// files defining one Service): the first is used.
    DuplicateObject,
    /// More endpoints than one frontend can hold; the rest are left out.
    TooManyEndpoints,
    /// More frontends or backend slots than one Service may take
    /// ([`super::Budget`]): the whole Service is left out.
    OverBudget,
    /// A frontend the BPF maps have no room for (`--map-size-*`): left
    /// out whole, or kept as it was when it grew.
    MapFull,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unparsable => "unparsable",
            SkipReason::UnsupportedKind => "unsupported_kind",
            SkipReason::MissingName => "missing_name",
            SkipReason::MissingSpec => "missing_spec",
            SkipReason::InvalidClusterIp => "invalid_cluster_ip",
            SkipReason::InvalidExternalIp => "invalid_external_ip",
            SkipReason::InvalidLoadBalancerIp => "invalid_load_balancer_ip",
            SkipReason::InvalidSourceRange => "invalid_source_range",
            SkipReason::InvalidPort => "invalid_port",
            SkipReason::UnknownProtocol => "unknown_protocol",
            SkipReason::InvalidEndpointAddress => "invalid_endpoint_address",
            SkipReason::MissingServiceNameLabel => "missing_service_name_label",
            SkipReason::DuplicateFrontend => "duplicate_frontend",
            SkipReason::DuplicateObject => "duplicate_object",
            SkipReason::TooManyEndpoints => "too_many_endpoints",
            SkipReason::OverBudget => "over_budget",
            SkipReason::MapFull => "map_full",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing left out, with enough to find it: the kind, the object's
/// `namespace/name` (or file), and a detail such as the offending value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skip {
    pub kind: &'static str,
    pub object: String,
    pub reason: SkipReason,
    pub detail: String,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped {} {}: {}", self.kind, self.object, self.reason)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

pub(super) fn skip(kind: &'static str, object: &str, reason: SkipReason, detail: &str) -> Skip {
    Skip {
        kind,
        object: object.to_string(),
        reason,
        detail: detail.to_string(),
    }
}
