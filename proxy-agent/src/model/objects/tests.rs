//! Objects shaped like `kubectl get -o yaml` output from a real cluster
//! (managed fields, status, controller labels and annotations, target
//! references) parse into what the model programs, on nodes that pick
//! different endpoints and for agents with another proxy name.
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{ServiceObject, SliceObject};
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

fn parse<K: serde::de::DeserializeOwned>(yaml: &str) -> K {
    serde_yaml::from_str(yaml).expect("a valid object")
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
fn real_objects_parse_into_what_the_model_programs() {
    let services: Vec<Service> = vec![parse(LB_SERVICE), parse(OTHER_PROXYS_SERVICE)];
    let slices: Vec<EndpointSlice> = vec![parse(SLICE)];
    // Nodes that pick different endpoints: by hints for their zone or
    // name, by locality for the Local policy.
    for config in [
        config("node-a", Some("zone-1"), None),
        config("node-b", Some("zone-2"), None),
        config("node-x", None, None),
    ] {
        let out = format!("{:?}", build_desired_state(&services, &slices, &config));
        assert!(
            out.contains("Endpoint { ip: 10.244.")
                && out.contains("trigger_times: {\"shop/web\"")
                && out.contains("10.96.10.20")
                && !out.contains("10.96.10.21"),
            "ours programmed, the other proxy's left alone: {out}"
        );
    }
    let theirs = config("node-c", Some("zone-9"), Some("other-proxy"));
    let out = format!("{:?}", build_desired_state(&services, &slices, &theirs));
    assert!(
        out.contains("10.96.10.21"),
        "an agent named other-proxy: {out}"
    );
}

#[test]
fn objects_keep_their_names_for_the_sources_cache() {
    use kube::runtime::reflector::Lookup;
    let svc = ServiceObject::new(&parse(LB_SERVICE));
    assert_eq!(svc.key(), Some(&("shop".into(), "web".into())));
    assert_eq!(svc.to_object_ref(()).to_string(), "Service.v1./web.shop");
    let slice = SliceObject::new(&parse(SLICE));
    assert_eq!(slice.service(), Some(("shop".into(), "web".into())));
    assert_eq!(
        slice.to_object_ref(()).to_string(),
        "EndpointSlice.v1.discovery.k8s.io/web-abcde.shop"
    );
    let unnamed = ServiceObject::new(&parse("spec: {clusterIP: 10.96.0.1}\n"));
    assert_eq!(unnamed.key(), None);
}
