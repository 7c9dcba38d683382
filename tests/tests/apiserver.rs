//! The agent against a real Kubernetes API server (etcd + the generic
//! apiserver from `tests/apiserver/`), with clients in the sandbox.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{
    agent, apiserver::ApiServer, cluster::Cluster, manifest, Agent, Sandbox, SandboxConfig,
};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::Value;

const VIP: &str = "10.96.0.10";
const WAIT: Duration = Duration::from_secs(20);

struct World {
    sb: Sandbox,
    api: ApiServer,
    cluster: Cluster,
    metrics_port: u16,
    healthz_port: u16,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn world(backends: usize, server_args: &[&str]) -> Result<World> {
    let sb = Sandbox::with_config(SandboxConfig {
        backends,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..SandboxConfig::default()
    })?;
    let api = ApiServer::start(server_args, &[])?;
    let cluster = Cluster::connect(&api.kubeconfig())?;
    Ok(World {
        sb,
        api,
        cluster,
        metrics_port: free_port()?,
        healthz_port: free_port()?,
    })
}

impl World {
    fn start_agent(&self) -> Result<Agent> {
        let cfg = self.sb.agent_config()?.for_api_server(
            &self.api.kubeconfig(),
            self.metrics_port,
            self.healthz_port,
        );
        Agent::start(cfg)
    }

    /// `default/web` http 80→8080 with the given backends (1-based).
    fn web(&self, backends: &[usize]) -> Result<()> {
        self.cluster.apply_yaml(&web_yaml(&self.sb, backends, 80))
    }

    fn addrs(&self, backends: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = backends
            .iter()
            .map(|i| format!("{}:8080", self.sb.backend_ip(*i)))
            .collect();
        v.sort();
        v
    }

    fn http(&self, port: u16, path: &str) -> Result<(u16, String)> {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').context("curl output")?;
        Ok((code.trim().parse()?, body.to_string()))
    }
}

fn web_yaml(sb: &Sandbox, backends: &[usize], port: u16) -> String {
    let ips: Vec<String> = backends.iter().map(|i| sb.backend_ip(*i)).collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    manifest::documents(&[
        manifest::service("default/web", VIP, &[("http", port, 8080, "TCP")]),
        manifest::endpoint_slice("default/web", "web-1", &refs, &[("http", 8080, "TCP")], &[]),
    ])
}

fn backends_of(d: &Value, port: u16) -> Option<Vec<String>> {
    agent::backends(d, VIP, port, "TCP")
}

#[test]
fn services_from_the_api_server_are_programmed_scaled_changed_and_removed() -> Result<()> {
    let w = world(3, &[])?;
    w.web(&[1])?;
    let mut a = w.start_agent()?;
    a.wait_for_backends(VIP, 80, "TCP", &w.addrs(&[1]), WAIT)?;
    ensure!(w.sb.probe_tcp(&format!("{VIP}:80"), 10)?.ok == 10);

    // Scale 1 → 3 → 0 → 2: each step in the maps and in the traffic.
    for step in [&[1usize, 2, 3][..], &[], &[2, 3]] {
        w.web(step)?;
        a.wait_until(|d| backends_of(d, 80) == Some(w.addrs(step)), WAIT)?;
        let r = w.sb.probe_tcp(&format!("{VIP}:80"), 30)?;
        if step.is_empty() {
            ensure!(r.ok == 0, "no endpoints: refused {r:?}");
        } else {
            ensure!(
                r.ok == 30 && r.by_backend.len() == step.len(),
                "{step:?}: {r:?}"
            );
        }
    }

    // The Service's port changes: the old frontend goes, the new one works.
    w.cluster.apply_yaml(&web_yaml(&w.sb, &[2, 3], 8000))?;
    a.wait_until(
        |d| backends_of(d, 80).is_none() && backends_of(d, 8000) == Some(w.addrs(&[2, 3])),
        WAIT,
    )?;
    ensure!(w.sb.probe_tcp(&format!("{VIP}:8000"), 10)?.ok == 10);

    // Another proxy's Service is left alone.
    let mut other = manifest::ServiceSpec::cluster_ip("default/other", "10.96.0.77")
        .port("http", 80, 8080, "TCP");
    other.labels.push((
        "service.kubernetes.io/service-proxy-name".into(),
        "someone-else".into(),
    ));
    w.cluster.apply_yaml(&other.to_yaml())?;

    // Delete: nothing is left in any map.
    w.cluster.delete::<Service>(Some("default"), "web")?;
    w.cluster
        .delete::<EndpointSlice>(Some("default"), "web-1")?;
    let d = a.wait_until(|d| agent::frontend_count(d) == 0, WAIT)?;
    for map in ["services", "backends", "rev_nat", "names"] {
        ensure!(d["entries"][map] == 0, "{map} leaked: {d}");
    }
    ensure!(
        agent::frontend(&d, "10.96.0.77", 80, "TCP").is_none(),
        "service-proxy-name ignored"
    );
    Ok(())
}

#[test]
fn an_api_server_outage_breaks_nothing_and_later_changes_arrive_within_a_second() -> Result<()> {
    let mut w = world(3, &[])?;
    w.web(&[1, 2, 3])?;
    let mut a = w.start_agent()?;
    a.wait_for_backends(VIP, 80, "TCP", &w.addrs(&[1, 2, 3]), WAIT)?;
    let stream = w.sb.spawn_probe(&[
        "loop",
        "--to",
        &format!("{VIP}:80"),
        "--interval-ms",
        "100",
        "--duration-ms",
        "33000",
    ])?;
    let old_port = w.api.port();
    w.api.stop_server();
    std::thread::sleep(Duration::from_secs(30));
    ensure!(a.is_running(), "the agent survives the outage");
    // The cluster changed meanwhile (through another server on the same
    // etcd, as if this node alone had lost the API server).
    w.api.start_server_on(0)?;
    Cluster::connect(&w.api.kubeconfig())?.apply_yaml(&web_yaml(&w.sb, &[2], 80))?;
    w.api.stop_server();
    w.api.start_server_on(old_port)?;
    let back = Instant::now();
    a.wait_until(|d| backends_of(d, 80) == Some(w.addrs(&[2])), WAIT)?;
    let took = back.elapsed();
    let r: bpfproxy_tests::TcpReport = stream.finish_json(Duration::from_secs(30))?;
    eprintln!(
        "30 s outage: {} requests ok, {} failed; change in the maps {took:?} after the server returned",
        r.ok, r.failed
    );
    ensure!(
        r.failed == 0 && r.ok > 250,
        "requests failed during the outage: {r:?}"
    );
    ensure!(
        took < Duration::from_secs(1),
        "change arrived {took:?} after the server returned"
    );
    Ok(())
}

#[test]
fn a_forced_relist_after_410_gone_loses_nothing() -> Result<()> {
    // No watch cache and fast compaction: a watch resumed from an old
    // resourceVersion gets 410 Gone and the agent must relist.
    let mut w = world(3, &["--watch-cache=false", "--etcd-compaction-interval=1s"])?;
    w.web(&[1, 2, 3])?;
    let mut a = w.start_agent()?;
    a.wait_for_backends(VIP, 80, "TCP", &w.addrs(&[1, 2, 3]), WAIT)?;
    let old_port = w.api.port();
    w.api.stop_server();
    w.api.start_server_on(0)?;
    let side = Cluster::connect(&w.api.kubeconfig())?;
    // Many revisions, then the change that matters, then compaction.
    for i in 0..20 {
        side.apply_yaml(&manifest::service(
            &format!("default/churn-{i}"),
            &format!("10.96.1.{}", i + 1),
            &[("", 80, 8080, "TCP")],
        ))?;
    }
    side.apply_yaml(&web_yaml(&w.sb, &[3], 80))?;
    std::thread::sleep(Duration::from_secs(3));
    w.api.stop_server();
    w.api.start_server_on(old_port)?;
    let d = a.wait_until(
        |d| backends_of(d, 80) == Some(w.addrs(&[3])) && agent::frontend_count(d) == 21,
        WAIT,
    )?;
    ensure!(
        agent::frontend(&d, "10.96.1.20", 80, "TCP").is_some(),
        "{d}"
    );
    let log = std::fs::read_to_string(a.log_path())?;
    ensure!(
        log.contains("410") || log.contains("Expired") || log.contains("Gone"),
        "the agent should have seen 410 Gone and relisted:\n{log}"
    );
    Ok(())
}

#[test]
fn a_restarted_agent_deletes_nothing_before_its_first_sync_then_converges() -> Result<()> {
    let mut w = world(3, &[])?;
    w.web(&[1, 2])?;
    w.cluster.apply_yaml(&manifest::documents(&[
        manifest::service("default/gone", "10.96.0.11", &[("http", 80, 8080, "TCP")]),
        manifest::endpoint_slice(
            "default/gone",
            "gone-1",
            &[&w.sb.backend_ip(3)],
            &[("http", 8080, "TCP")],
            &[],
        ),
    ]))?;
    let mut a = w.start_agent()?;
    a.wait_until(|d| agent::frontend_count(d) == 2, WAIT)?;
    a.kill()?;
    // While no agent runs: one Service deleted, one scaled.
    w.cluster.delete::<Service>(Some("default"), "gone")?;
    w.cluster
        .delete::<EndpointSlice>(Some("default"), "gone-1")?;
    w.web(&[1, 2, 3])?;
    // A new agent that cannot reach the API server must not prune.
    let port = w.api.port();
    w.api.stop_server();
    a.start_again()?;
    std::thread::sleep(Duration::from_secs(3));
    let d = a.dump_json()?;
    ensure!(
        agent::frontend_count(&d) == 2,
        "nothing deleted before a full sync: {d}"
    );
    ensure!(
        w.sb.probe_tcp("10.96.0.11:80", 5)?.ok == 5,
        "old state keeps serving"
    );
    w.api.start_server_on(port)?;
    a.wait_until(
        |d| agent::frontend_count(d) == 1 && backends_of(d, 80) == Some(w.addrs(&[1, 2, 3])),
        WAIT,
    )?;
    Ok(())
}

/// The value of an unlabelled sample, e.g. `name_count`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[test]
fn metrics_and_health_answer_like_kube_proxy() -> Result<()> {
    let w = world(2, &[])?;
    w.web(&[1])?;
    let node_name = "bpfpt-node";
    w.cluster.apply_yaml(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node_name}\n  labels: {{topology.kubernetes.io/zone: z1}}\n  finalizers: [bpfproxy.test/hold]\n"
    ))?;
    let mut a = w.start_agent()?;
    a.wait_for_backends(VIP, 80, "TCP", &w.addrs(&[1]), WAIT)?;

    let (code, body) = w.http(w.metrics_port, "/proxyMode")?;
    ensure!(code == 200 && body == "ebpf", "{code} {body}");
    let (code, body) = w.http(w.metrics_port, "/healthz")?;
    ensure!(code == 200 && body == "ok");
    let (_, m0) = w.http(w.metrics_port, "/metrics")?;
    let count0 =
        sample(&m0, "kubeproxy_sync_proxy_rules_duration_seconds_count").context("histogram")?;
    ensure!(
        m0.contains(r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"}"#),
        "{m0}"
    );
    ensure!(
        m0.contains(r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="16.384"}"#),
        "{m0}"
    );

    // An EndpointSlice change stamped by the "controller" 2 s ago.
    let stamp = rfc3339_ago(2);
    let mut slice: EndpointSlice = serde_yaml::from_str(&manifest::endpoint_slice(
        "default/web",
        "web-1",
        &[&w.sb.backend_ip(1), &w.sb.backend_ip(2)],
        &[("http", 8080, "TCP")],
        &[],
    ))?;
    slice
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "endpoints.kubernetes.io/last-change-trigger-time".into(),
            stamp,
        );
    w.cluster.apply(&slice)?;
    a.wait_for_backends(VIP, 80, "TCP", &w.addrs(&[1, 2]), WAIT)?;
    std::thread::sleep(Duration::from_millis(200));
    let (_, m1) = w.http(w.metrics_port, "/metrics")?;
    let count1 =
        sample(&m1, "kubeproxy_sync_proxy_rules_duration_seconds_count").context("histogram")?;
    ensure!(count1 > count0, "sync count grows: {count0} -> {count1}");
    let npd = sample(&m1, "kubeproxy_network_programming_duration_seconds_count").unwrap_or(0.0);
    let npd_sum = sample(&m1, "kubeproxy_network_programming_duration_seconds_sum").unwrap_or(0.0);
    ensure!(
        npd >= 1.0 && (2.0..30.0).contains(&npd_sum),
        "programming latency {npd} / {npd_sum}s:\n{m1}"
    );
    ensure!(sample(&m1, "kubeproxy_sync_proxy_rules_endpoint_changes_total").unwrap_or(0.0) >= 1.0);
    ensure!(
        sample(&m1, "kubeproxy_sync_proxy_rules_last_timestamp_seconds").unwrap_or(0.0) > 1.7e9
    );

    // :10256 health, kube-proxy's JSON.
    let (code, body) = w.http(w.healthz_port, "/healthz")?;
    let j: Value = serde_json::from_str(&body)?;
    ensure!(
        code == 200 && j["healthy"] == true && j["nodeEligible"] == true,
        "{body}"
    );
    ensure!(
        j["lastUpdated"].is_string() && j["currentTime"].is_string(),
        "{body}"
    );
    // The node is being deleted (held by a finalizer): /healthz tells load
    // balancers to drain it, /livez keeps the pod alive.
    w.cluster.delete::<Node>(None, node_name)?;
    let deadline = Instant::now() + WAIT;
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        last = w.http(w.healthz_port, "/healthz")?;
        if last.0 == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let j: Value = serde_json::from_str(&last.1)?;
    ensure!(last.0 == 503 && j["nodeEligible"] == false, "{last:?}");
    let (code, _) = w.http(w.healthz_port, "/livez")?;
    ensure!(code == 200, "livez {code}");
    // Let the node go.
    let mut node: Node = w.cluster.get(None, node_name)?;
    node.metadata.finalizers = Some(vec![]);
    node.metadata.managed_fields = None;
    w.cluster.apply(&node)?;
    Ok(())
}

/// RFC 3339 time `secs` seconds ago.
fn rfc3339_ago(secs: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs)).to_string()
}
