//! `externalTrafficPolicy: Local` Services seen from inside the cluster: a
//! pod or a node process that addresses the Service's NodePort, externalIP
//! or LoadBalancer IP gets every endpoint of the Service, as kube-proxy
//! routes in-cluster traffic to external destinations through its
//! cluster-wide chain, while traffic from outside (the TC programs) keeps
//! the node-local endpoints and the client address.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{ensure, Result};
use bpfproxy_tests::{
    agent, manifest,
    multinode::{node_ip, pod_endpoint, pod_name, ClusterConfig, ClusterSandbox},
    Agent, TcpReport,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const NODE_PORT: u16 = 30080;
const CLUSTER_IP: &str = "10.96.0.50";
/// An externalIP and a LoadBalancer IP (TEST-NET-3), on no node.
const EXTERNAL_IP: &str = "203.0.113.50";
const LB_IP: &str = "203.0.113.60";
/// Connections per target: two backends both answer with near certainty.
const CONNS: &str = "40";
/// Node 3 runs no endpoint of the Service.
const EMPTY_NODE: usize = 3;

/// Three nodes; `default/web` (LoadBalancer, eTP=Local, NodePort 30080,
/// an externalIP and an LB IP) backed by pod 1 of nodes 1 and 2. Agents run
/// on node 1 (has an endpoint) and node 3 (has none), with TC on their
/// fabric device.
fn setup() -> Result<(ClusterSandbox, Vec<Agent>)> {
    let sb = ClusterSandbox::new(ClusterConfig {
        nodes: 3,
        pods_per_node: 1,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..ClusterConfig::default()
    })?;
    let mut svc =
        manifest::ServiceSpec::cluster_ip("default/web", CLUSTER_IP).port("http", 80, 8080, "TCP");
    svc.type_ = "LoadBalancer".to_string();
    svc.external_traffic_policy = Some("Local".to_string());
    svc.ports[0].node_port = Some(NODE_PORT);
    svc.external_ips = vec![EXTERNAL_IP.to_string()];
    svc.load_balancer_ips = vec![LB_IP.to_string()];
    let slice = manifest::endpoint_slice_with(
        "default/web",
        "web-1",
        &[pod_endpoint(1, 1), pod_endpoint(2, 1)],
        &[("http", 8080, "TCP")],
    );
    sb.write_manifest("web.yaml", &manifest::documents(&[svc.to_yaml(), slice]))?;
    let mut agents = Vec::new();
    for i in [1, EMPTY_NODE] {
        let mut a = Agent::start(sb.agent_config_with_tc(i)?)?;
        a.wait_until(|d| in_cluster_backends(d, LB_IP).len() == 2, T)?;
        agents.push(a);
    }
    Ok((sb, agents))
}

/// Backends (`ip:port`) of the in-cluster view of `vip:80/TCP` (or of the
/// NodePort for `0.0.0.0`) in a dump.
fn in_cluster_backends(dump: &Value, vip: &str) -> Vec<String> {
    let port = if vip == "0.0.0.0" { NODE_PORT } else { 80 };
    let frontends = dump["frontends"].as_array().cloned().unwrap_or_default();
    frontends
        .iter()
        .filter(|f| f["vip"] == vip && f["port"] == port)
        .filter(|f| {
            f["flags"]
                .as_array()
                .is_some_and(|fl| fl.iter().any(|x| x == "in-cluster"))
        })
        .flat_map(|f| f["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| format!("{}:{}", b["ip"].as_str().unwrap_or(""), b["port"]))
        .collect()
}

fn both_pods() -> Vec<String> {
    vec![pod_name(1, 1), pod_name(2, 1)]
}

fn answered_by(r: &TcpReport) -> Vec<String> {
    r.by_backend.keys().cloned().collect()
}

/// `CONNS` connections to each of `targets` through commands made by
/// `client` (a pod's or a node's `probe`): both pods answer every target.
fn every_endpoint_answers(
    sb: &ClusterSandbox,
    targets: &[String],
    client: impl Fn() -> Result<Command>,
) -> Result<()> {
    for to in targets {
        let r: TcpReport = sb.probe(client()?, &["tcp", "--to", to, "--count", CONNS], T)?;
        eprintln!("-> {to}: {:?}", r.by_backend);
        ensure!(r.ok == 40 && answered_by(&r) == both_pods(), "{to}: {r:?}");
    }
    Ok(())
}

#[test]
fn a_pod_on_a_node_without_endpoints_reaches_every_endpoint_through_the_etp_local_frontends(
) -> Result<()> {
    let (sb, _agents) = setup()?;
    let targets = [
        format!("{}:{NODE_PORT}", node_ip(EMPTY_NODE)),
        format!("{EXTERNAL_IP}:80"),
        format!("{LB_IP}:80"),
    ];
    every_endpoint_answers(&sb, &targets, || {
        sb.pod_command(EMPTY_NODE, 1, sb.probe_bin())
    })
}

#[test]
fn a_pod_next_to_an_endpoint_still_reaches_every_endpoint_through_the_etp_local_frontends(
) -> Result<()> {
    let (sb, _agents) = setup()?;
    let targets = [format!("{}:{NODE_PORT}", node_ip(1)), format!("{LB_IP}:80")];
    every_endpoint_answers(&sb, &targets, || sb.pod_command(1, 1, sb.probe_bin()))
}

#[test]
fn a_node_process_reaches_every_endpoint_through_the_etp_local_frontends() -> Result<()> {
    let (sb, _agents) = setup()?;
    let targets = [
        format!("127.0.0.1:{NODE_PORT}"),
        format!("{}:{NODE_PORT}", node_ip(EMPTY_NODE)),
        format!("{EXTERNAL_IP}:80"),
    ];
    every_endpoint_answers(&sb, &targets, || {
        sb.node_command(EMPTY_NODE, sb.probe_bin())
    })
}

#[test]
fn clients_outside_the_cluster_keep_the_node_local_endpoints_and_the_dump_shows_both_views(
) -> Result<()> {
    let (sb, agents) = setup()?;
    let r = sb.client_tcp(&format!("{}:{NODE_PORT}", node_ip(1)), 40, T)?;
    ensure!(
        r.ok == 40 && answered_by(&r) == [pod_name(1, 1)],
        "TC serves node 1's own endpoint only: {r:?}"
    );
    let dump = agents[1].dump_json()?;
    ensure!(
        agent::backends(&dump, "0.0.0.0", NODE_PORT, "TCP") == Some(vec![]),
        "node {EMPTY_NODE}'s node view is empty: {dump}"
    );
    ensure!(in_cluster_backends(&dump, "0.0.0.0").len() == 2, "{dump}");
    let text = agents[1].dump_text()?;
    let np = format!("0.0.0.0:{NODE_PORT}/TCP");
    ensure!(
        text.contains(&format!(
            "{np} [external,etp-local] -> no local endpoints (drop)"
        )) && text.contains(&format!("{np} [in-cluster] -> 2 backends")),
        "{text}"
    );
    Ok(())
}
