//! The healthCheckNodePort server of an `externalTrafficPolicy: Local`
//! Service: a load balancer asks every node, and only nodes with a local
//! endpoint answer 200 (kube-proxy's JSON and status rules).
use std::{path::PathBuf, time::Duration};

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{manifest, Sandbox, SandboxConfig};
use serde_json::Value;

const HC_PORT: u16 = 32555;

fn service() -> String {
    "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: default}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.40\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32555\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30555}]\n".to_string()
}

/// One endpoint, on this node (`bpfpt-node`, the sandbox agent's name) or
/// on another.
fn slice(sb: &Sandbox, node: &str) -> String {
    slice_of(&[manifest::Endpoint::ready(&sb.backend_ip(1)).on_node(node)])
}

fn slice_of(eps: &[manifest::Endpoint]) -> String {
    manifest::endpoint_slice_with("default/lb", "lb-1", eps, &[("http", 8080, "TCP")])
}

fn sandbox() -> Result<Sandbox> {
    Sandbox::with_config(SandboxConfig {
        backends: 2,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..SandboxConfig::default()
    })
}

/// (HTTP status, JSON body) of the health check port, from the node's own
/// namespace (the sandbox agent runs in the client namespace).
fn ask(sb: &Sandbox) -> Result<(u16, Value)> {
    let out = sb.client_output(
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{HC_PORT}/healthz"),
        ],
        Duration::from_secs(10),
    )?;
    let text = out.stdout;
    let (body, code) = text.rsplit_once('\n').context("curl output")?;
    let code: u16 = code.trim().parse()?;
    // While a port closes, a connection accepted just before can still be
    // answered by the listener with a plain 404 (no Service any more).
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
    };
    Ok((code, json))
}

fn wait_for(sb: &Sandbox, want: u16) -> Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = ask(sb)?;
        if code == want {
            return Ok(body);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "health check answered {code} {body}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_health_check_port_reports_local_endpoints_like_kube_proxy() -> Result<()> {
    let sb = sandbox()?;
    sb.write_manifest(
        "lb.yaml",
        &manifest::documents(&[service(), slice(&sb, "bpfpt-node")]),
    )?;
    let _agent = sb.start_agent()?;
    let body = wait_for(&sb, 200)?;
    ensure!(body["localEndpoints"] == 1, "{body}");
    ensure!(
        body["service"]["namespace"] == "default" && body["service"]["name"] == "lb",
        "{body}"
    );
    ensure!(body["serviceProxyHealthy"] == true, "{body}");

    // The endpoint moves to another node: this node must be taken out.
    sb.write_manifest(
        "lb.yaml",
        &manifest::documents(&[service(), slice(&sb, "elsewhere")]),
    )?;
    let body = wait_for(&sb, 503)?;
    ensure!(body["localEndpoints"] == 0, "{body}");

    // The Service goes away: so does its port.
    sb.remove_manifest("lb.yaml")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = ask(&sb)?;
        if code == 0 {
            break; // connection refused: curl reports 000
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "port still open ({code})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn a_node_whose_local_endpoints_are_all_terminating_is_drained_with_503() -> Result<()> {
    let sb = sandbox()?;
    let here = |i: usize| manifest::Endpoint::ready(&sb.backend_ip(i)).on_node("bpfpt-node");
    sb.write_manifest(
        "lb.yaml",
        &manifest::documents(&[service(), slice_of(&[here(1), here(2)])]),
    )?;
    let _agent = sb.start_agent()?;
    let body = wait_for(&sb, 200)?;
    ensure!(body["localEndpoints"] == 2, "{body}");

    // A rollout: both local pods terminate (still serving), the new ones
    // run elsewhere. The load balancer must stop sending here.
    let terminating =
        |i: usize| manifest::Endpoint::terminating_serving(&sb.backend_ip(i)).on_node("bpfpt-node");
    let elsewhere = manifest::Endpoint::ready("10.200.0.200").on_node("elsewhere");
    sb.write_manifest(
        "lb.yaml",
        &manifest::documents(&[
            service(),
            slice_of(&[terminating(1), terminating(2), elsewhere]),
        ]),
    )?;
    let body = wait_for(&sb, 503)?;
    ensure!(body["localEndpoints"] == 0, "{body}");
    Ok(())
}
