//! Who runs where in the sandbox cluster, and what address a backend must
//! see as the client: pure, so the traffic checks can be derived from it.

use std::collections::BTreeSet;

use bpfproxy_tests::multinode::{k8s_node_name, pod_name, NetworkShape, CLIENT_IP};

/// Who runs where: nodes `1..nodes` run the backends, node `nodes` none
/// (like a control-plane node); its first pod is the client pod.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) nodes: usize,
    pub(super) pods_per_node: usize,
    /// How the nodes reach each other's pods (decides the SNAT address).
    pub(super) shape: NetworkShape,
}

impl Layout {
    /// The node without a backend.
    pub(super) fn bare_node(&self) -> usize {
        self.nodes
    }

    /// `(node, pod)` of the pod that plays the in-cluster client.
    pub(super) fn client_pod(&self) -> (usize, usize) {
        (self.bare_node(), 1)
    }

    /// `(node, pod)` of every backend.
    pub(super) fn backend_pods(&self) -> Vec<(usize, usize)> {
        (1..self.bare_node())
            .flat_map(|i| (1..=self.pods_per_node).map(move |j| (i, j)))
            .collect()
    }

    pub(super) fn backend_names(&self) -> BTreeSet<String> {
        self.backend_pods()
            .into_iter()
            .map(|(i, j)| pod_name(i, j))
            .collect()
    }

    pub(super) fn backend_node_names(&self) -> Vec<String> {
        (1..self.bare_node()).map(k8s_node_name).collect()
    }

    /// The node a backend (by the name it answers) runs on.
    pub(super) fn node_of(&self, backend: &str) -> Option<usize> {
        self.backend_pods()
            .into_iter()
            .find(|&(i, j)| pod_name(i, j) == backend)
            .map(|(i, _)| i)
    }

    /// The client address backend `backend` must see for a connection from
    /// the external client to node `entry`'s eTP=Cluster NodePort: the
    /// client's own when the backend is local (no SNAT needed, the reply
    /// passes that node anyway), else the entry node's address on the
    /// device it forwards to other nodes by (SNAT, so the reply comes back
    /// through it): `flannel.1`'s on the VXLAN overlay.
    pub(super) fn expected_peer(&self, entry: usize, backend: &str) -> String {
        if self.node_of(backend) == Some(entry) {
            CLIENT_IP.to_string()
        } else {
            self.shape.snat_ip(entry)
        }
    }
}

/// The demo's default layout (3 nodes, 2 pods each), for the unit tests
/// here and of what is derived from a layout.
#[cfg(test)]
pub(super) const LAYOUT: Layout = Layout {
    nodes: 3,
    pods_per_node: 2,
    shape: NetworkShape::Vxlan,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_node_runs_no_backend_and_hosts_the_client_pod() {
        assert_eq!(LAYOUT.backend_pods(), vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
        assert_eq!(LAYOUT.client_pod(), (3, 1));
        assert_eq!(LAYOUT.node_of("node2-pod2"), Some(2));
        assert_eq!(LAYOUT.node_of("node3-pod1"), None);
    }

    #[test]
    fn a_backend_sees_the_client_only_behind_its_own_node() {
        assert_eq!(LAYOUT.expected_peer(1, "node1-pod2"), CLIENT_IP);
        assert_eq!(LAYOUT.expected_peer(1, "node2-pod1"), "10.244.1.0");
        assert_eq!(LAYOUT.expected_peer(3, "node1-pod1"), "10.244.3.0");
    }
}
