//! `bpfproxy explain` end to end: the answer read from a running agent's
//! pinned maps matches what the Services ask for and where connections
//! really go. Single-node scenarios in the sandbox (socket view, and the
//! TC view's lookups, which need no attached program to be read); the
//! existing-flow and by-address affinity checks through a NodePort of the
//! multi-node sandbox, from its external client.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{
    manifest::{self, Endpoint, ServiceSpec},
    multinode::{
        self, node_ip, node_port_service, pod_endpoint, pod_ip, pod_name, split_echo_peer,
    },
    paths, Agent, Sandbox, SandboxConfig,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// The sandbox agent's node name (`Sandbox::agent_config`).
const NODE: &str = "bpfpt-node";
const LB_IP: &str = "203.0.113.60";

/// `bpfproxy explain --bpffs BPFFS ARGS --json`: exit code and the parsed
/// answer.
fn explain(bpffs: &Path, args: &[&str]) -> Result<(i32, Value)> {
    let out = Command::new(paths::bpfproxy_bin()?)
        .arg("explain")
        .arg("--bpffs")
        .arg(bpffs)
        .args(args)
        .arg("--json")
        .output()
        .context("running bpfproxy explain")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_str(&text).with_context(|| {
        format!(
            "explain {args:?} exit {code}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    println!("explain {}:\n{text}", args.join(" "));
    Ok((code, v))
}

/// The `backend` fields of the answer's candidates, sorted.
fn candidates(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["candidates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["backend"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn sandbox() -> Result<Sandbox> {
    Sandbox::with_config(SandboxConfig {
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..SandboxConfig::with_backends(3)
    })
}

fn slice(svc: &str, eps: &[Endpoint]) -> String {
    manifest::endpoint_slice_with(
        svc,
        &format!("{}-1", svc.replace('/', "-")),
        eps,
        &[("http", 8080, "TCP")],
    )
}

/// ClusterIP `default/<name>` at `ip`, port 80 → 8080.
fn cluster_ip(name: &str, ip: &str) -> ServiceSpec {
    ServiceSpec::cluster_ip(&format!("default/{name}"), ip).port("http", 80, 8080, "TCP")
}

fn at(sb: &Sandbox, i: usize) -> String {
    format!("{}:8080", sb.backend_ip(i))
}

/// Session affinity seen by the socket programs: the entry of the client's
/// network namespace pins the backend every one of its connections
/// reached; without the namespace, explain cannot know which entry is the
/// client's and says so.
#[test]
fn socket_affinity_names_the_entry_that_pins_the_client() -> Result<()> {
    let sb = sandbox()?;
    let mut web = cluster_ip("web", "10.96.0.50");
    web.client_ip_affinity_seconds = Some(300);
    let eps: Vec<Endpoint> = (1..=3)
        .map(|i| Endpoint::ready(&sb.backend_ip(i)))
        .collect();
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[web.to_yaml(), slice("default/web", &eps)]),
    )?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends(
        "10.96.0.50",
        80,
        "TCP",
        &[at(&sb, 1), at(&sb, 2), at(&sb, 3)],
        T,
    )?;
    let r = sb.probe_tcp("10.96.0.50:80", 12)?;
    ensure!(
        r.ok == 12 && r.by_backend.len() == 1,
        "affinity keeps one backend: {r:?}"
    );
    let name = r.by_backend.keys().next().context("a backend")?;
    let i = (1..=3)
        .find(|i| sb.backend_name(*i) == *name)
        .context("a sandbox backend")?;
    let netns = sb.client_ns().path().to_string_lossy().into_owned();
    let (code, v) = explain(
        sb.bpffs(),
        &[
            "--src",
            "10.200.0.1",
            "--dst",
            "10.96.0.50:80/TCP",
            "--netns",
            &netns,
        ],
    )?;
    ensure!(code == 0, "a frontend matched: exit {code}");
    ensure!(v["frontend"]["service"] == "default/web:http", "{v}");
    let entry = &v["affinity"]["entry"];
    ensure!(
        entry["backend"] == at(&sb, i).as_str(),
        "the entry pins {name}: {v}"
    );
    let left = entry["expires_in_s"].as_u64().unwrap_or(0);
    ensure!(
        (290..=300).contains(&left),
        "refreshed by the last connection: {left}s left"
    );
    ensure!(v["verdict"]["backend"] == at(&sb, i).as_str(), "{v}");
    ensure!(
        candidates(&v) == [at(&sb, 1), at(&sb, 2), at(&sb, 3)],
        "{v}"
    );
    // Without the namespace: the entries are listed, the client's unknown.
    let (_, v) = explain(sb.bpffs(), &["--dst", "10.96.0.50:80"])?;
    ensure!(v["affinity"]["entry"].is_null(), "{v}");
    ensure!(
        v["affinity"]["other_entries"].as_array().map(Vec::len) == Some(1),
        "{v}"
    );
    ensure!(v["verdict"]["backend"].is_null(), "a random pick: {v}");
    Ok(())
}

/// The terminating fallback and internalTrafficPolicy: Local shape the
/// candidates the maps hold, and explain shows exactly those.
#[test]
fn candidates_follow_the_terminating_fallback_and_itp_local() -> Result<()> {
    let sb = sandbox()?;
    let drain = |eps: &[Endpoint]| {
        let svc = cluster_ip("drain", "10.96.0.51").to_yaml();
        sb.write_manifest(
            "drain.yaml",
            &manifest::documents(&[svc, slice("default/drain", eps)]),
        )
    };
    let (ready, term) = (Endpoint::ready, Endpoint::terminating_serving);
    drain(&[
        ready(&sb.backend_ip(1)),
        term(&sb.backend_ip(2)),
        term(&sb.backend_ip(3)),
    ])?;
    let mut local = cluster_ip("local", "10.96.0.52");
    local.internal_traffic_policy = Some("Local".into());
    let eps = [
        ready(&sb.backend_ip(1)).on_node(NODE),
        ready(&sb.backend_ip(2)).on_node("elsewhere"),
    ];
    sb.write_manifest(
        "local.yaml",
        &manifest::documents(&[local.to_yaml(), slice("default/local", &eps)]),
    )?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends("10.96.0.51", 80, "TCP", &[at(&sb, 1)], T)?;
    agent.wait_for_backends("10.96.0.52", 80, "TCP", &[at(&sb, 1)], T)?;
    let (code, v) = explain(sb.bpffs(), &["--dst", "10.96.0.51:80"])?;
    ensure!(
        code == 0 && candidates(&v) == [at(&sb, 1)],
        "a ready endpoint: only it: {v}"
    );
    ensure!(
        v["verdict"]["backend"] == at(&sb, 1).as_str(),
        "the only candidate: {v}"
    );
    // The ready endpoint goes: the serving-and-terminating ones stand in.
    drain(&[term(&sb.backend_ip(2)), term(&sb.backend_ip(3))])?;
    agent.wait_for_backends("10.96.0.51", 80, "TCP", &[at(&sb, 2), at(&sb, 3)], T)?;
    let (_, v) = explain(sb.bpffs(), &["--dst", "10.96.0.51:80"])?;
    ensure!(
        candidates(&v) == [at(&sb, 2), at(&sb, 3)],
        "the fallback: {v}"
    );
    ensure!(
        v["candidates"][0]["weight"] == 1 && v["candidates"][0]["of"] == 2,
        "{v}"
    );
    let r = sb.probe_tcp("10.96.0.51:80", 20)?;
    let want = [sb.backend_name(2), sb.backend_name(3)];
    ensure!(
        r.ok == 20 && r.by_backend.keys().all(|n| want.contains(n)),
        "{r:?}"
    );
    // iTP Local: this node's endpoint only, flagged local.
    let (_, v) = explain(sb.bpffs(), &["--dst", "10.96.0.52:80"])?;
    ensure!(
        candidates(&v) == [at(&sb, 1)] && v["candidates"][0]["local"] == true,
        "{v}"
    );
    let filters = v["frontend"]["filters"].to_string();
    ensure!(filters.contains("every candidate runs on this node"), "{v}");
    Ok(())
}

/// `bpfproxy explain` without `--json`: exit code and the text walk.
fn explain_text(bpffs: &Path, args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(paths::bpfproxy_bin()?)
        .arg("explain")
        .arg("--bpffs")
        .arg(bpffs)
        .args(args)
        .output()
        .context("running bpfproxy explain")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("explain {}:\n{text}", args.join(" "));
    Ok((out.status.code().unwrap_or(-1), text))
}

/// eTP=Local from outside and from the node, loadBalancerSourceRanges for
/// a client inside and outside them, and destinations no frontend serves.
#[test]
fn etp_local_source_ranges_and_unknown_destinations() -> Result<()> {
    let sb = sandbox()?;
    let eps = [
        Endpoint::ready(&sb.backend_ip(1)).on_node(NODE),
        Endpoint::ready(&sb.backend_ip(2)).on_node("elsewhere"),
    ];
    let np = node_port_service(
        "default/np",
        "10.96.0.53",
        &[("http", 80, 8080, "TCP", 30080)],
        "Local",
    );
    let mut lb = cluster_ip("lb", "10.96.0.54");
    lb.type_ = "LoadBalancer".into();
    lb.ports[0].node_port = Some(30081);
    lb.load_balancer_ips = vec![LB_IP.into()];
    lb.source_ranges = vec!["10.200.0.0/24".into()];
    sb.write_manifest(
        "np.yaml",
        &manifest::documents(&[np, slice("default/np", &eps)]),
    )?;
    sb.write_manifest(
        "lb.yaml",
        &manifest::documents(&[lb.to_yaml(), slice("default/lb", &eps)]),
    )?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends(LB_IP, 80, "TCP", &[at(&sb, 1), at(&sb, 2)], T)?;
    agent.wait_for_backends("10.96.0.53", 80, "TCP", &[at(&sb, 1), at(&sb, 2)], T)?;
    let dump = agent.dump_json()?;
    let node_addr = dump["node_addresses"][0]
        .as_str()
        .context("a NodePort address")?
        .to_string();

    // eTP=Local: from outside this node's endpoint, from the node all.
    let np_dst = format!("{node_addr}:30080/TCP");
    let (code, v) = explain(
        sb.bpffs(),
        &["--from-outside", "--src", "10.200.0.7", "--dst", &np_dst],
    )?;
    ensure!(code == 0 && candidates(&v) == [at(&sb, 1)], "{v}");
    ensure!(
        v["frontend"]["flags"].to_string().contains("etp-local"),
        "{v}"
    );
    ensure!(
        v["frontend"]["filters"]
            .to_string()
            .contains("externalTrafficPolicy: Local"),
        "{v}"
    );
    let (_, v) = explain(sb.bpffs(), &["--dst", "127.0.0.1:30080"])?;
    ensure!(v["frontend"]["scope"] == "in-cluster", "{v}");
    ensure!(candidates(&v) == [at(&sb, 1), at(&sb, 2)], "{v}");

    // Source ranges.
    let lb_dst = format!("{LB_IP}:80/TCP");
    let (code, v) = explain(
        sb.bpffs(),
        &["--from-outside", "--src", "10.200.0.1", "--dst", &lb_dst],
    )?;
    ensure!(code == 0 && v["source_ranges"]["allowed"] == true, "{v}");
    ensure!(v["source_ranges"]["matched"] == "10.200.0.0/24", "{v}");
    ensure!(v["verdict"]["action"] == "translate", "{v}");
    let (code, text) = explain_text(
        sb.bpffs(),
        &["--from-outside", "--src", "198.51.100.7", "--dst", &lb_dst],
    )?;
    ensure!(code == 0, "the frontend matched: exit {code}");
    ensure!(
        text.contains("source ranges: 10.200.0.0/24: 198.51.100.7 denied"),
        "{text}"
    );
    ensure!(text.contains("verdict: drop"), "{text}");

    // No frontend: exit 1 with the reason.
    let (code, v) = explain(sb.bpffs(), &["--dst", "10.96.0.53:81"])?;
    ensure!(code == 1 && v["no_match"]["code"] == "unknown-port", "{v}");
    ensure!(
        v["no_match"]["reason"].to_string().contains("no such port"),
        "{v}"
    );
    let (code, v) = explain(sb.bpffs(), &["--dst", "10.96.0.99:80"])?;
    ensure!(code == 1 && v["no_match"]["code"] == "unknown-vip", "{v}");
    let (code, v) = explain(
        sb.bpffs(),
        &[
            "--from-outside",
            "--src",
            "10.200.0.7",
            "--dst",
            "10.96.0.53:80",
        ],
    )?;
    ensure!(code == 1 && v["no_match"]["code"] == "not-external", "{v}");
    let (code, _) = explain_text(sb.bpffs(), &["--dst", "10.96.0.53"])?;
    ensure!(
        code == 2,
        "a destination without a port is an error: exit {code}"
    );
    Ok(())
}

/// The client ports of the external client's established TCP connections
/// to `dst` (`ss` in its namespace).
fn client_ports(sb: &multinode::ClusterSandbox, dst: &str) -> Result<Vec<u16>> {
    let out = sb
        .client_command("ss")?
        .args(["-Htn", "state", "established", "dst", dst])
        .output()
        .context("ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{}:", multinode::CLIENT_IP);
    Ok(text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix)?.parse().ok())
        .collect())
}

/// Through a NodePort from outside: for each held connection, the backend
/// of its conntrack entry that explain reports is the one that answers
/// it; with ClientIP affinity, the entry keyed by the client's address
/// pins the backend all its connections reached.
#[test]
fn existing_flows_and_affinity_from_outside_match_where_connections_went() -> Result<()> {
    let sb = multinode::ClusterSandbox::new(multinode::ClusterConfig {
        nodes: 2,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        echo_peer: true,
        ..Default::default()
    })?;
    let eps = [pod_endpoint(1, 1), pod_endpoint(2, 1)];
    let web = node_port_service(
        "default/web",
        "10.96.0.60",
        &[("http", 80, 8080, "TCP", 30080)],
        "Cluster",
    );
    let mut sticky =
        ServiceSpec::cluster_ip("default/sticky", "10.96.0.61").port("http", 80, 8080, "TCP");
    sticky.type_ = "NodePort".into();
    sticky.ports[0].node_port = Some(30081);
    sticky.client_ip_affinity_seconds = Some(300);
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[web, slice("default/web", &eps)]),
    )?;
    sb.write_manifest(
        "sticky.yaml",
        &manifest::documents(&[sticky.to_yaml(), slice("default/sticky", &eps)]),
    )?;
    let mut agent = Agent::start(sb.agent_config_with_tc(1)?)?;
    let both = [
        format!("{}:8080", pod_ip(1, 1)),
        format!("{}:8080", pod_ip(2, 1)),
    ];
    agent.wait_for_backends("0.0.0.0", 30080, "TCP", &both, T)?;
    agent.wait_for_backends("0.0.0.0", 30081, "TCP", &both, T)?;
    let bpffs = sb.node(1).bpffs.path().to_path_buf();
    let ip_of = |name: &str| {
        (1..=2)
            .find(|i| pod_name(*i, 1) == name)
            .map(|i| format!("{}:8080", pod_ip(i, 1)))
    };

    let np = format!("{}:30080", node_ip(1));
    let mut held = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut conn = sb.client_hold(&np)?;
        let answer = conn.ping()?;
        let (name, _) = split_echo_peer(&answer)?;
        let went = ip_of(name).with_context(|| format!("a pod answered: {answer}"))?;
        let port = client_ports(&sb, &np)?
            .into_iter()
            .find(|p| !seen.contains(p))
            .context("the new connection's client port")?;
        seen.push(port);
        let src = format!("{}:{port}", multinode::CLIENT_IP);
        let (code, v) = explain(
            &bpffs,
            &[
                "--from-outside",
                "--src",
                &src,
                "--dst",
                &format!("{np}/TCP"),
            ],
        )?;
        ensure!(code == 0, "exit {code}");
        let flows = v["existing_flows"].as_array().cloned().unwrap_or_default();
        ensure!(flows.len() == 1, "one conntrack flow for {src}: {v}");
        ensure!(
            flows[0]["backend"] == went.as_str(),
            "the flow went to {went}: {v}"
        );
        ensure!(v["verdict"]["backend"] == went.as_str(), "{v}");
        ensure!(conn.ping()? == answer, "the connection stayed where it was");
        held.push((conn, went));
    }
    let reached: std::collections::BTreeSet<&String> = held.iter().map(|(_, w)| w).collect();
    println!("held connections reached {reached:?}");

    let sticky_np = format!("{}:30081", node_ip(1));
    let r = sb.client_tcp(&sticky_np, 10, T)?;
    ensure!(r.ok == 10, "{r:?}");
    let names = multinode::answers_by_backend(&r)?;
    ensure!(names.len() == 1, "one client address, one backend: {r:?}");
    let went = names
        .keys()
        .next()
        .and_then(|n| ip_of(n))
        .context("a pod answered")?;
    let args = [
        "--from-outside",
        "--src",
        multinode::CLIENT_IP,
        "--dst",
        &sticky_np,
    ];
    let (code, text) = explain_text(&bpffs, &args)?;
    ensure!(code == 0, "exit {code}");
    let want = format!("client {} pinned to backend {went}", multinode::CLIENT_IP);
    ensure!(text.contains(&want), "{text}");
    let (_, v) = explain(&bpffs, &args)?;
    ensure!(v["affinity"]["entry"]["backend"] == went.as_str(), "{v}");
    ensure!(
        v["verdict"]["backend"] == went.as_str(),
        "new connections follow it: {v}"
    );
    Ok(())
}
