//! ClusterIP Services in the multi-node sandbox, the way users first try
//! them: pods reaching backends on other nodes, and the `kubernetes`
//! Service leading to the API server on a node address, from a pod and from
//! a node.
use std::{path::PathBuf, time::Duration};

use anyhow::{ensure, Result};
use bpfproxy_tests::{
    manifest,
    multinode::{node_ip, node_name, pod_ip, pod_name, ClusterConfig, ClusterSandbox},
    Agent, TcpReport,
};

const T: Duration = Duration::from_secs(30);

fn cluster() -> Result<ClusterSandbox> {
    ClusterSandbox::new(ClusterConfig {
        nodes: 3,
        pods_per_node: 1,
        tcp_ports: vec![8080, 6443],
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..ClusterConfig::default()
    })
}

/// Writes `service` (Service `default/web`, port http 80 → 8080) with
/// `backends`, starts node 1's agent and waits for the frontend.
fn serve_web(
    sb: &ClusterSandbox,
    service: String,
    cluster_ip: &str,
    backends: &[&str],
) -> Result<Agent> {
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[
            service,
            manifest::endpoint_slice(
                "default/web",
                "web-1",
                backends,
                &[("http", 8080, "TCP")],
                &[],
            ),
        ]),
    )?;
    let mut agent = Agent::start(sb.agent_config(1)?)?;
    let want: Vec<String> = backends.iter().map(|b| format!("{b}:8080")).collect();
    agent.wait_for_backends(cluster_ip, 80, "TCP", &want, T)?;
    Ok(agent)
}

#[test]
fn a_pod_reaches_a_cluster_ip_backed_by_pods_on_other_nodes() -> Result<()> {
    let sb = cluster()?;
    let (b2, b3) = (pod_ip(2, 1), pod_ip(3, 1));
    let svc = manifest::service("default/web", "10.96.0.20", &[("http", 80, 8080, "TCP")]);
    let _agent = serve_web(&sb, svc, "10.96.0.20", &[&b2, &b3])?;
    let r: TcpReport = sb.probe(
        sb.pod_command(1, 1, sb.probe_bin())?,
        &["tcp", "--to", "10.96.0.20:80", "--count", "60"],
        T,
    )?;
    ensure!(r.ok == 60, "{r:?}");
    ensure!(
        r.count(&pod_name(2, 1)) > 0 && r.count(&pod_name(3, 1)) > 0,
        "both nodes' pods: {r:?}"
    );
    Ok(())
}

#[test]
fn the_kubernetes_service_reaches_the_api_server_on_a_node_address() -> Result<()> {
    let sb = cluster()?;
    // kubeadm's `kubernetes` Service: 443 → 6443 on the control plane's
    // address, a host-network backend.
    let cp = node_ip(1);
    sb.write_manifest(
        "kubernetes.yaml",
        &manifest::documents(&[
            manifest::service(
                "default/kubernetes",
                "10.96.0.1",
                &[("https", 443, 6443, "TCP")],
            ),
            manifest::endpoint_slice(
                "default/kubernetes",
                "kubernetes",
                &[&cp],
                &[("https", 6443, "TCP")],
                &[],
            ),
        ]),
    )?;
    let mut agent = Agent::start(sb.agent_config(2)?)?;
    agent.wait_for_backends("10.96.0.1", 443, "TCP", &[format!("{cp}:6443")], T)?;
    for cmd in [
        sb.pod_command(2, 1, sb.probe_bin())?,
        sb.node_command(2, sb.probe_bin())?,
    ] {
        let r: TcpReport = sb.probe(cmd, &["tcp", "--to", "10.96.0.1:443", "--count", "5"], T)?;
        ensure!(r.ok == 5 && r.count(&node_name(1)) == 5, "{r:?}");
    }
    // A real client too, from the pod.
    let mut curl = sb.pod_command(2, 1, "curl")?;
    curl.args(["-sS", "--max-time", "5", "http://10.96.0.1:443/"]);
    let body = bpfproxy_tests::process::run_with_timeout(&mut curl, T)?;
    ensure!(body.trim() == node_name(1), "curl got {body:?}");
    Ok(())
}

#[test]
fn node_ports_answer_on_loopback_and_node_addresses_for_processes_on_the_node() -> Result<()> {
    let sb = cluster()?;
    let (b2, b3) = (pod_ip(2, 1), pod_ip(3, 1));
    let mut svc = manifest::ServiceSpec::cluster_ip("default/web", "10.96.0.30")
        .port("http", 80, 8080, "TCP");
    svc.type_ = "NodePort".into();
    svc.ports[0].node_port = Some(30080);
    let _agent = serve_web(&sb, svc.to_yaml(), "10.96.0.30", &[&b2, &b3])?;
    let targets = [
        "127.0.0.1:30080".to_string(),
        format!("{}:30080", node_ip(1)),
    ];
    for to in &targets {
        let r: TcpReport = sb.probe(
            sb.node_command(1, sb.probe_bin())?,
            &["tcp", "--to", to, "--count", "40"],
            T,
        )?;
        ensure!(r.ok == 40, "{to} from the node: {r:?}");
        ensure!(
            r.count(&pod_name(2, 1)) > 0 && r.count(&pod_name(3, 1)) > 0,
            "{to}: {r:?}"
        );
    }
    // A pod reaches its node's address on the NodePort too.
    let r: TcpReport = sb.probe(
        sb.pod_command(1, 1, sb.probe_bin())?,
        &["tcp", "--to", &targets[1], "--count", "10"],
        T,
    )?;
    ensure!(r.ok == 10, "{r:?}");
    Ok(())
}

#[test]
fn a_pod_reaches_itself_through_its_service_hairpin() -> Result<()> {
    let sb = cluster()?;
    let me = pod_ip(1, 1);
    let mut svc = manifest::ServiceSpec::cluster_ip("default/self", "10.96.0.40")
        .port("http", 80, 8080, "TCP");
    svc.type_ = "NodePort".into();
    svc.ports[0].node_port = Some(30090);
    sb.write_manifest(
        "self.yaml",
        &manifest::documents(&[
            svc.to_yaml(),
            manifest::endpoint_slice(
                "default/self",
                "self-1",
                &[&me],
                &[("http", 8080, "TCP")],
                &[],
            ),
        ]),
    )?;
    let mut agent = Agent::start(sb.agent_config(1)?)?;
    agent.wait_for_backends("10.96.0.40", 80, "TCP", &[format!("{me}:8080")], T)?;
    // Through the ClusterIP and through its own node's NodePort.
    for to in ["10.96.0.40:80".to_string(), format!("{}:30090", node_ip(1))] {
        let r: TcpReport = sb.probe(
            sb.pod_command(1, 1, sb.probe_bin())?,
            &["tcp", "--to", &to, "--count", "5"],
            T,
        )?;
        ensure!(r.ok == 5 && r.count(&pod_name(1, 1)) == 5, "{to}: {r:?}");
    }
    Ok(())
}
