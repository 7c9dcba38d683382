//! Where Services and EndpointSlices come from: the API server's watches,
//! or a directory of ordinary Kubernetes YAML (the embedded default that
//! needs no cluster). Both keep objects parsed (`model::ServiceObject`),
//! not as API structs.
pub mod kube;
pub mod manifest;
pub mod strip;
pub mod watch_dir;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::model::{ServiceObject, Skip, SliceObject};

/// A complete view of the objects a source holds at one moment, parsed.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Shared, because the API-server source hands out its cached objects
    /// without copying them.
    pub services: Vec<Arc<ServiceObject>>,
    pub slices: Vec<Arc<SliceObject>>,
    /// This node, when the source knows it (zone label, deletion).
    pub node: Option<Arc<Node>>,
    /// Documents that could not be read as objects.
    pub skips: Vec<Skip>,
}
