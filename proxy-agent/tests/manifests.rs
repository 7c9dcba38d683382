//! The deployment manifests parse as the Kubernetes objects they claim to
//! be and keep the promises users rely on (one agent on every node, the
//! kube-proxy ports, probes on the health port, no dependency on the
//! `kubernetes` ClusterIP to reach the API server).
use std::{fs, path::PathBuf};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::Deserialize;

fn manifest(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .collect()
}

fn daemonset() -> DaemonSet {
    serde_yaml::from_str(&manifest("daemonset.yaml")).expect("a DaemonSet")
}

#[test]
fn the_daemonset_runs_on_every_node_with_host_network() {
    let ds = daemonset();
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    let tolerations = pod.tolerations.expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint (control plane, draining nodes)"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
}

#[test]
fn the_agent_serves_kube_proxys_ports_and_is_probed_on_them() {
    let ds = daemonset();
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    let c = &pod.containers[0];
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, [10249, 10256]);
    let live = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("liveness");
    assert_eq!(live.path.as_deref(), Some("/livez"));
    let ready = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness");
    assert_eq!(ready.path.as_deref(), Some("/healthz"));
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    // Every flag the manifest passes must exist in the CLI.
    let cli = <proxy_agent::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("bpfproxy".to_string()).chain(args),
    );
    assert!(cli.is_ok(), "{cli:?}");
}

#[test]
fn a_preflight_init_container_checks_the_kernel_first_with_the_agents_pin_path() {
    let ds = daemonset();
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    let init = pod.init_containers.expect("init containers");
    assert_eq!(init.len(), 1);
    let args = init[0].args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("preflight"));
    let cli = <proxy_agent::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("bpfproxy".to_string()).chain(args.clone()),
    );
    assert!(cli.is_ok(), "{cli:?}");
    let agent_args = pod.containers[0].args.clone().unwrap_or_default();
    let bpffs = |a: &[String]| a.iter().find(|x| x.starts_with("--bpffs")).cloned();
    assert_eq!(
        bpffs(&args),
        bpffs(&agent_args),
        "the same bpffs as the agent"
    );
}

#[test]
fn every_container_runs_the_image_of_this_version() {
    let ds = daemonset();
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    let want = format!("bpfproxy:{}", env!("CARGO_PKG_VERSION"));
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in containers {
        assert_eq!(c.image.as_deref(), Some(want.as_str()), "{}", c.name);
    }
    let k = manifest("kustomization.yaml");
    assert!(
        k.contains(&format!("newTag: {}", env!("CARGO_PKG_VERSION"))),
        "{k}"
    );
}

#[test]
fn the_api_server_address_does_not_come_from_the_kubernetes_cluster_ip() {
    let ds = daemonset();
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    let env = pod.containers[0].env.clone().unwrap_or_default();
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    for needed in [
        "NODE_NAME",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
    ] {
        assert!(names.contains(&needed), "{needed} missing: {names:?}");
    }
    let cm: ConfigMap = serde_yaml::from_str(&manifest("apiserver-configmap.yaml")).expect("cm");
    let data = cm.data.expect("data");
    assert!(data.contains_key("host") && data.contains_key("port"));
}

#[test]
fn rbac_grants_read_only_access_to_what_the_agent_watches() {
    let docs = documents(&manifest("rbac.yaml"));
    assert_eq!(docs.len(), 3);
    let _: ServiceAccount = serde_yaml::from_value(docs[0].clone()).expect("sa");
    let role: ClusterRole = serde_yaml::from_value(docs[1].clone()).expect("role");
    let _: ClusterRoleBinding = serde_yaml::from_value(docs[2].clone()).expect("binding");
    let rules = role.rules.expect("rules");
    let verbs: Vec<&String> = rules.iter().flat_map(|r| &r.verbs).collect();
    assert!(verbs
        .iter()
        .all(|v| ["get", "list", "watch"].contains(&v.as_str())));
    let resources: Vec<&String> = rules
        .iter()
        .flat_map(|r| r.resources.iter().flatten())
        .collect();
    for r in ["services", "nodes", "endpointslices"] {
        assert!(resources.iter().any(|x| x.as_str() == r), "{r}");
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let k: serde_yaml::Value = serde_yaml::from_str(&manifest("kustomization.yaml")).expect("yaml");
    let listed: Vec<&str> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for f in &listed {
        manifest(f);
    }
    assert_eq!(
        listed,
        ["rbac.yaml", "apiserver-configmap.yaml", "daemonset.yaml"]
    );
}
