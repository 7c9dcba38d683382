//! `--devices` left to auto-detection in the multi-node sandbox: the agent
//! finds the node's own device (not the pod bridge), follows addresses and
//! devices that appear after it started, and `bpfproxy dump` shows the
//! addresses NodePorts answer on and the live flows.
//!
//! The agent runs inside node 1's namespace, so the only devices it can see
//! are the sandbox's.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{
    manifest,
    multinode::{
        node_ip, node_port_service, pod_endpoint, pod_ip, ClusterConfig, ClusterSandbox, CLIENT_IP,
    },
    Agent, VethPair,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const NODE_PORT: u16 = 30080;
/// How long a change of addresses or devices may take to be served: the
/// agent re-reads them every 2 s.
const FOLLOW: Duration = Duration::from_secs(10);
/// A second address of node 1 on the fabric subnet.
const EXTRA_IP: &str = "192.168.50.201";
/// A link between node 1 and the client that appears after start-up.
const LATE_NODE_IP: &str = "192.168.60.1";
const LATE_CLIENT_IP: &str = "192.168.60.100";

/// One node with one pod behind a NodePort, and its agent on `--devices`
/// auto-detection.
fn start() -> Result<(ClusterSandbox, Agent)> {
    let sb = ClusterSandbox::new(ClusterConfig {
        nodes: 1,
        pods_per_node: 1,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        echo_peer: true,
        ..ClusterConfig::default()
    })?;
    write_web(&sb)?;
    let mut cfg = sb.agent_config(1)?;
    cfg.extra_args.push("--devices=auto".to_string());
    let mut agent = Agent::start(cfg)?;
    let want = [format!("{}:8080", pod_ip(1, 1))];
    agent.wait_for_backends("0.0.0.0", NODE_PORT, "TCP", &want, T)?;
    Ok((sb, agent))
}

/// `default/web`: NodePort 30080 → pod 1 of node 1.
fn write_web(sb: &ClusterSandbox) -> Result<()> {
    let ports = [("http", 80, 8080, "TCP", NODE_PORT)];
    let svc = node_port_service("default/web", "10.96.0.40", &ports, "Cluster");
    let slice = manifest::endpoint_slice_with(
        "default/web",
        "web-1",
        &[pod_endpoint(1, 1)],
        &[("http", 8080, "TCP")],
    );
    sb.write_manifest("web.yaml", &manifest::documents(&[svc, slice]))
}

fn node_port(ip: &str) -> String {
    format!("{ip}:{NODE_PORT}")
}

/// Retries one connection until it works (within [`FOLLOW`]); how long
/// that took.
fn served_within(sb: &ClusterSandbox, to: &str) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let r = sb.client_tcp(to, 1, T)?;
        if r.ok == 1 {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < FOLLOW,
            "{to} not served within {FOLLOW:?}: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn node_addresses(dump: &Value) -> Vec<String> {
    dump["node_addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The agent's log lines naming the devices the TC programs are on.
fn device_lines(agent: &Agent) -> Vec<String> {
    std::fs::read_to_string(agent.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("TC programs on these devices"))
        .map(String::from)
        .collect()
}

/// `bpfproxy dump` writing into a pipe whose reader is already gone, as
/// `bpfproxy dump | head -0` would.
fn dump_into_closed_pipe(agent: &Agent) -> Result<std::process::Output> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe() fills the two fds, which we own from here on.
    ensure!(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe()");
    // SAFETY: fresh fds from pipe(), owned once each.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    std::process::Command::new(&agent.config().bin)
        .arg("dump")
        .arg("--bpffs")
        .arg(&agent.config().bpffs)
        .stdout(std::process::Stdio::from(write))
        .output()
        .context("running bpfproxy dump")
}

#[test]
fn auto_detection_picks_the_node_device_and_not_the_pod_bridge() -> Result<()> {
    let (sb, agent) = start()?;
    let r = sb.client_tcp(&node_port(&node_ip(1)), 20, T)?;
    ensure!(r.ok == 20, "NodePort through the detected device: {r:?}");
    let lines = device_lines(&agent);
    let device = &sb.node(1).device;
    ensure!(
        lines.len() == 1 && lines[0].contains(device.as_str()) && !lines[0].contains("cbr0"),
        "TC on {device} only, never the pod bridge: {lines:?}"
    );
    let dump = agent.dump_json()?;
    ensure!(
        node_addresses(&dump) == ["10.244.1.1".to_string(), node_ip(1)],
        "dump names every address NodePorts answer on: {}",
        dump["node_addresses"]
    );
    let out = dump_into_closed_pipe(&agent)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !stderr.contains("panicked"),
        "a closed pipe is not an error for dump: {:?} {stderr}",
        out.status
    );
    Ok(())
}

#[test]
fn addresses_and_devices_that_appear_later_are_served_and_dropped_ones_are_not() -> Result<()> {
    let (sb, mut agent) = start()?;
    let node = &sb.node(1);

    // A second address on the node's device (a VIP, a DHCP change).
    node.ns.ip(&[
        "addr",
        "add",
        &format!("{EXTRA_IP}/24"),
        "dev",
        &node.device,
    ])?;
    let took = served_within(&sb, &node_port(EXTRA_IP))?;
    println!("new address served after {took:?}");

    // A new link to the client: the pod needs a route back to it.
    let _late = VethPair::new(
        &node.ns,
        &[&format!("{LATE_NODE_IP}/24")],
        sb.client_ns(),
        &[&format!("{LATE_CLIENT_IP}/24")],
    )?;
    sb.pod(1, 1)
        .ns
        .ip(&["route", "add", "192.168.60.0/24", "via", "10.244.1.1"])?;
    let took = served_within(&sb, &node_port(LATE_NODE_IP))?;
    println!("new device served after {took:?}");
    let r = sb.client_tcp(&node_port(LATE_NODE_IP), 20, T)?;
    ensure!(r.ok == 20, "{r:?}");
    ensure!(
        device_lines(&agent).len() == 2,
        "the new device got the TC programs: {:?}",
        device_lines(&agent)
    );

    // The extra address goes away: NodePorts stop answering on it.
    node.ns.ip(&[
        "addr",
        "del",
        &format!("{EXTRA_IP}/24"),
        "dev",
        &node.device,
    ])?;
    agent
        .wait_until(
            |d| !node_addresses(d).contains(&EXTRA_IP.to_string()),
            FOLLOW,
        )
        .context("a removed address must leave the node-address map")?;

    // Live flows: a held connection shows up with its client and backend.
    let mut conn = sb.client_hold(&node_port(&node_ip(1)))?;
    conn.ping()?;
    let dump = agent.dump_json()?;
    let flows = dump["flows"].as_array().cloned().unwrap_or_default();
    let held = flows.iter().any(|f| {
        f["client"]
            .as_str()
            .is_some_and(|c| c.starts_with(CLIENT_IP))
            && f["frontend"] == node_port(&node_ip(1))
            && f["backend"] == format!("{}:8080", pod_ip(1, 1))
            && f["state"] == "established"
    });
    ensure!(held, "the held connection is a live flow: {flows:?}");
    let text = agent.dump_text()?;
    let line = format!(
        "-> {} => {}:8080 established",
        node_port(&node_ip(1)),
        pod_ip(1, 1)
    );
    ensure!(
        text.lines().any(|l| l.contains(&line)),
        "the text dump shows the held flow ({line}):\n{text}"
    );
    Ok(())
}

#[test]
fn a_listed_device_that_comes_back_with_a_new_ifindex_gets_the_programs_again() -> Result<()> {
    let sb = ClusterSandbox::new(ClusterConfig {
        nodes: 1,
        pods_per_node: 1,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..ClusterConfig::default()
    })?;
    write_web(&sb)?;
    let node = sb.node(1);
    let node_addr = format!("{LATE_NODE_IP}/24");
    let client_addr = format!("{LATE_CLIENT_IP}/24");
    let link = VethPair::new(&node.ns, &[&node_addr], sb.client_ns(), &[&client_addr])?;
    sb.pod(1, 1)
        .ns
        .ip(&["route", "add", "192.168.60.0/24", "via", "10.244.1.1"])?;
    // Listed devices never change, so only the ifindex can tell that the
    // device is a new one.
    let mut cfg = sb.agent_config(1)?;
    cfg.extra_args
        .push(format!("--devices={},{}", node.device, link.a()));
    let mut agent = Agent::start(cfg)?;
    let want = [format!("{}:8080", pod_ip(1, 1))];
    agent.wait_for_backends("0.0.0.0", NODE_PORT, "TCP", &want, T)?;
    served_within(&sb, &node_port(LATE_NODE_IP))?;

    link.recreate(&node.ns, &[&node_addr], sb.client_ns(), &[&client_addr])?;
    let took = served_within(&sb, &node_port(LATE_NODE_IP))?;
    println!("recreated device served again after {took:?}");
    let r = sb.client_tcp(&node_port(LATE_NODE_IP), 20, T)?;
    ensure!(r.ok == 20, "{r:?}");
    Ok(())
}
