//! Where Services and EndpointSlices come from. Today: a directory of
//! ordinary Kubernetes YAML, the embedded default that needs no cluster.
pub mod manifest;
pub mod watch_dir;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::model::Skip;

/// A complete view of the objects a source holds at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Documents that could not be read as objects.
    pub skips: Vec<Skip>,
}
