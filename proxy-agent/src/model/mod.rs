//! The desired state: what every Service needs on this node, computed from
//! Services and EndpointSlices with kube-proxy's semantics. Pure functions
//! only; nothing here knows about BPF.
mod build;
mod claims;
mod endpoints;
mod objects;
mod service;
mod skip;
mod slices;
mod types;

pub use build::{build_desired_state, build_service, BuildOutput, HealthCheck, ServiceBuild};
pub use claims::{build_one, Model, ServiceRef};
pub use objects::{service_objects, slice_objects, ServiceObject, SliceObject};
pub use skip::{Skip, SkipReason};
pub use types::{
    Budget, DesiredState, Endpoint, Frontend, FrontendKind, FrontendState, ModelConfig,
    NodeContext, Protocol, ServicePortName,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// `(namespace, name)` of an object; a missing namespace is `default`.
fn namespaced_name(meta: &ObjectMeta) -> Option<(&str, &str)> {
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    Some((meta.namespace.as_deref().unwrap_or("default"), name))
}

/// A Kubernetes port number (i32 in the API) as a usable port.
fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// Protocol and number of a Service or EndpointSlice port (protocol
/// defaults to TCP, as in the API), or None with a skip naming the port.
fn usable_port(
    kind: &'static str,
    obj: &str,
    name: &str,
    protocol: Option<&str>,
    number: Option<i32>,
    skips: &mut Vec<Skip>,
) -> Option<(Protocol, u16)> {
    let Ok(proto) = protocol.unwrap_or("TCP").parse::<Protocol>() else {
        skips.push(skip::skip(
            kind,
            obj,
            SkipReason::UnknownProtocol,
            &format!("port {name:?} protocol {:?}", protocol.unwrap_or_default()),
        ));
        return None;
    };
    let Some(port) = number.and_then(valid_port) else {
        skips.push(skip::skip(
            kind,
            obj,
            SkipReason::InvalidPort,
            &format!(
                "port {name:?} number {}",
                number.map_or_else(|| "missing".to_string(), |n| n.to_string())
            ),
        ));
        return None;
    };
    Some((proto, port))
}
