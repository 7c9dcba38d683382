//! Keeps of this Node only the fields the agent reads, before the Node
//! watch's cache holds on to it: an object from the API server carries
//! `managedFields`, a status with images and conditions, and annotations
//! written by controllers. (Services and EndpointSlices are parsed into
//! the model's own forms instead, see `model::ServiceObject`.)
//!
//! The function keeps a list of what to keep (not of what to drop), so a
//! field added to the API later costs nothing here. The list follows what
//! `sync.rs` reads (the zone label, deletion and taints); a reader that
//! starts using another field must add it here.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Node, NodeSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// This Node's zone, for topology hints (read by the sync).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// This Node reduced to its name, zone label, deletion and taints.
pub fn node(node: &mut Node) {
    let deletion = node.metadata.deletion_timestamp.take();
    node.metadata = meta(&mut node.metadata, &[ZONE_LABEL], &[]);
    node.metadata.deletion_timestamp = deletion;
    node.spec = node.spec.take().map(|s| NodeSpec {
        taints: s.taints,
        ..NodeSpec::default()
    });
    node.status = None;
}

/// Name, namespace, and the listed labels and annotations of `m`.
fn meta(m: &mut ObjectMeta, labels: &[&str], annotations: &[&str]) -> ObjectMeta {
    ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        labels: only(m.labels.take(), labels),
        annotations: only(m.annotations.take(), annotations),
        ..ObjectMeta::default()
    }
}

/// The entries of `map` under `keys`; None when none is there (an empty
/// map still allocates a node).
fn only(map: Option<BTreeMap<String, String>>, keys: &[&str]) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = map?
        .into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests;
