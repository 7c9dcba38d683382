//! A stripped Node gives the sync the same answers as the original, and
//! keeps nothing else. The object is shaped like `kubectl get -o yaml`
//! output from a real cluster.
use k8s_openapi::api::core::v1::Node;

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  uid: 99999999-8888-7777-6666-555555555555
  deletionTimestamp: "2026-11-30T11:00:00Z"
  labels:
    kubernetes.io/hostname: node-a
    topology.kubernetes.io/zone: zone-1
    topology.kubernetes.io/region: region-1
  annotations: {node.alpha.kubernetes.io/ttl: "0"}
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:status: {}
    manager: kubelet
    operation: Update
spec:
  podCIDR: 10.244.1.0/24
  providerID: aws:///zone-1/i-0123
  taints:
  - {key: ToBeDeletedByClusterAutoscaler, value: "1732960000", effect: NoSchedule}
status:
  addresses: [{type: InternalIP, address: 192.0.2.100}]
  capacity: {cpu: "4", memory: 16Gi}
  images: [{names: [registry.example/web:1], sizeBytes: 123456789}]
  nodeInfo: {architecture: amd64, bootID: b, containerRuntimeVersion: c, kernelVersion: k, kubeProxyVersion: v, kubeletVersion: v, machineID: m, operatingSystem: linux, osImage: o, systemUUID: s}
"#;

fn parse<K: serde::de::DeserializeOwned>(yaml: &str) -> K {
    serde_yaml::from_str(yaml).expect("a valid object")
}

fn stripped<K: Clone>(obj: &K, f: fn(&mut K)) -> K {
    let mut out = obj.clone();
    f(&mut out);
    out
}

/// The JSON keys anywhere in `obj`.
fn keys(obj: &impl serde::Serialize) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::to_value(obj).expect("serializable"), &mut out);
    out
}

fn assert_lacks(obj: &impl serde::Serialize, unwanted: &[&str]) {
    let keys = keys(obj);
    for u in unwanted {
        assert!(!keys.iter().any(|k| k == u), "{u} kept: {keys:?}");
    }
}

#[test]
fn a_stripped_node_keeps_its_zone_deletion_and_taints() {
    let original: Node = parse(NODE);
    let node = stripped(&original, super::node);
    assert_eq!(
        crate::sync::node_zone(&node),
        crate::sync::node_zone(&original)
    );
    assert_eq!(node.metadata.name.as_deref(), Some("node-a"));
    assert!(node.metadata.deletion_timestamp.is_some());
    let taints: Vec<&str> = node
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .map(|t| t.key.as_str())
        .collect();
    assert_eq!(taints, ["ToBeDeletedByClusterAutoscaler"]);
    assert_lacks(
        &node,
        &[
            "status",
            "managedFields",
            "annotations",
            "uid",
            "podCIDR",
            "providerID",
        ],
    );
    let labels: Vec<&String> = node.metadata.labels.iter().flatten().map(|l| l.0).collect();
    assert_eq!(labels, [super::ZONE_LABEL]);
}
