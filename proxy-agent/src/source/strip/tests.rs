//! Stripped objects give the model the same answers as the originals, and
//! keep nothing else. The objects are shaped like `kubectl get -o yaml`
//! output from a real cluster (managed fields, status, controller labels
//! and annotations, target references).
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use crate::model::{build_desired_state, ModelConfig, NodeContext};

const LB_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  uid: 6f1c3b1e-8a5e-4c1e-9a3a-1b2c3d4e5f60
  resourceVersion: "918273"
  creationTimestamp: "2026-11-30T10:00:00Z"
  labels:
    app.kubernetes.io/name: web
    app.kubernetes.io/part-of: shop
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"shop"},"spec":{"type":"LoadBalancer"}}
    service.beta.kubernetes.io/aws-load-balancer-type: nlb
  finalizers: [service.kubernetes.io/load-balancer-cleanup]
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:metadata:
        f:labels:
          .: {}
          f:app.kubernetes.io/name: {}
      f:spec:
        f:ports:
          k:{"port":443,"protocol":"TCP"}:
            .: {}
            f:port: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2026-11-30T10:00:00Z"
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:status:
        f:loadBalancer:
          f:ingress: {}
    manager: cloud-controller-manager
    operation: Update
    subresource: status
    time: "2026-11-30T10:00:05Z"
spec:
  type: LoadBalancer
  selector: {app.kubernetes.io/name: web}
  clusterIP: 10.96.10.20
  clusterIPs: [10.96.10.20]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  externalIPs: [203.0.113.7]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Cluster
  healthCheckNodePort: 31999
  allocateLoadBalancerNodePorts: true
  loadBalancerSourceRanges: [198.51.100.0/24, "2001:db8::/32"]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: 8443, nodePort: 30443, appProtocol: https}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns, nodePort: 30053}
status:
  conditions:
  - {type: LoadBalancerReady, status: "True", reason: Provisioned, message: ok, lastTransitionTime: "2026-11-30T10:00:05Z"}
  loadBalancer:
    ingress:
    - {ip: 192.0.2.10, ports: [{port: 443, protocol: TCP}]}
    - {ip: 192.0.2.11, ipMode: Proxy}
    - {hostname: lb.example.com}
"#;

const OTHER_PROXYS_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: theirs
  namespace: shop
  labels: {service.kubernetes.io/service-proxy-name: other-proxy, team: blue}
spec:
  clusterIP: 10.96.10.21
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: shop
  generateName: web-
  uid: 0d3b2a1c-0000-4000-8000-000000000001
  resourceVersion: "918300"
  generation: 7
  labels:
    kubernetes.io/service-name: web
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    app.kubernetes.io/name: web
  annotations:
    endpoints.kubernetes.io/last-change-trigger-time: "2026-11-30T10:01:02Z"
  ownerReferences:
  - {apiVersion: v1, kind: Service, name: web, uid: 6f1c3b1e-8a5e-4c1e-9a3a-1b2c3d4e5f60, controller: true, blockOwnerDeletion: true}
  managedFields:
  - apiVersion: discovery.k8s.io/v1
    fieldsType: FieldsV1
    fieldsV1:
      f:addressType: {}
      f:endpoints: {}
      f:ports: {}
    manager: endpointslice-controller
    operation: Update
    time: "2026-11-30T10:01:02Z"
addressType: IPv4
ports:
- {name: https, port: 8443, protocol: TCP, appProtocol: https}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
  zone: zone-1
  hostname: web-0
  hints: {forZones: [{name: zone-1}], forNodes: [{name: node-a}]}
  targetRef: {kind: Pod, name: web-0, namespace: shop, uid: 11111111-2222-3333-4444-555555555555}
- addresses: [10.244.2.6]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-b
  zone: zone-2
  hints: {forZones: [{name: zone-2}], forNodes: [{name: node-b}]}
  targetRef: {kind: Pod, name: web-1, namespace: shop, uid: 66666666-7777-8888-9999-000000000000}
- addresses: [10.244.3.7]
  conditions: {ready: true}
  nodeName: node-c
  hints: {forZones: [{name: zone-1}], forNodes: [{name: node-c}]}
  deprecatedTopology: {kubernetes.io/hostname: node-c}
"#;

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

/// The model's whole output (state, skips, trigger times, health checks)
/// as text, for `services` and `slices` on a node with `config`.
fn model_text(services: &[Service], slices: &[EndpointSlice], config: &ModelConfig) -> String {
    format!(
        "{:?}",
        build_desired_state(services.iter(), slices.iter(), config)
    )
}

fn config(node: &str, zone: Option<&str>, proxy_name: Option<&str>) -> ModelConfig {
    ModelConfig {
        node: NodeContext {
            name: node.to_string(),
            zone: zone.map(str::to_string),
        },
        proxy_name: proxy_name.map(str::to_string),
        ..ModelConfig::default()
    }
}

#[test]
fn the_model_sees_the_same_objects_after_stripping() {
    let services: Vec<Service> = vec![parse(LB_SERVICE), parse(OTHER_PROXYS_SERVICE)];
    let slices: Vec<EndpointSlice> = vec![parse(SLICE)];
    let s_services: Vec<Service> = services
        .iter()
        .map(|s| stripped(s, super::service))
        .collect();
    let s_slices: Vec<EndpointSlice> = slices
        .iter()
        .map(|s| stripped(s, super::endpoint_slice))
        .collect();
    // Nodes that pick different endpoints: by hints for their zone or
    // name, by locality for the Local policy; and the other proxy's name.
    for config in [
        config("node-a", Some("zone-1"), None),
        config("node-b", Some("zone-2"), None),
        config("node-x", None, None),
        config("node-c", Some("zone-9"), Some("other-proxy")),
    ] {
        let want = model_text(&services, &slices, &config);
        assert!(
            want.contains("Endpoint { ip: 10.244.")
                && want.contains("trigger_times: {\"shop/web\""),
            "the fixture programs something: {want}"
        );
        assert_eq!(model_text(&s_services, &s_slices, &config), want);
    }
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
fn a_stripped_service_keeps_only_what_the_model_reads() {
    let svc = stripped(&parse::<Service>(LB_SERVICE), super::service);
    assert_lacks(
        &svc,
        &[
            "managedFields",
            "annotations",
            "labels",
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "finalizers",
            "selector",
            "ipFamilies",
            "targetPort",
            "appProtocol",
            "conditions",
            "hostname",
        ],
    );
    let ingress = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default();
    assert_eq!(ingress.len(), 3, "the hostname-only entry stays, empty");
    let theirs = stripped(&parse::<Service>(OTHER_PROXYS_SERVICE), super::service);
    let labels: Vec<&String> = theirs
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|l| l.0)
        .collect();
    assert_eq!(labels, ["service.kubernetes.io/service-proxy-name"]);
}

#[test]
fn a_stripped_slice_keeps_its_service_label_trigger_time_and_endpoints() {
    let slice = stripped(&parse::<EndpointSlice>(SLICE), super::endpoint_slice);
    assert_lacks(
        &slice,
        &[
            "managedFields",
            "ownerReferences",
            "generateName",
            "uid",
            "generation",
            "targetRef",
            "hostname",
            "zone",
            "deprecatedTopology",
            "appProtocol",
        ],
    );
    let meta = &slice.metadata;
    let labels: Vec<&String> = meta.labels.iter().flatten().map(|l| l.0).collect();
    assert_eq!(labels, ["kubernetes.io/service-name"]);
    let annotations: Vec<&String> = meta.annotations.iter().flatten().map(|a| a.0).collect();
    assert_eq!(annotations, [super::TRIGGER_TIME_ANNOTATION]);
    assert_eq!(slice.endpoints.len(), 3);
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

#[test]
fn objects_without_optional_parts_stay_as_they_are() {
    let bare: Service = parse("metadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n");
    assert_eq!(stripped(&bare, super::service), bare);
    let no_spec: Service = parse("metadata: {name: a}\n");
    assert_eq!(stripped(&no_spec, super::service), no_spec);
    let slice: EndpointSlice = parse("metadata: {name: s}\naddressType: IPv4\nendpoints: []\n");
    assert_eq!(stripped(&slice, super::endpoint_slice), slice);
}
