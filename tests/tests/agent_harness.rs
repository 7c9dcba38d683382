//! The harness's agent guard against the real `bpfproxy` binary (build it
//! first: `cargo build -p proxy-agent`, or set BPFPROXY_BIN): start, wait for
//! the dump, traffic through a ClusterIP, SIGKILL and restart. A smoke test
//! of the harness, not the end-to-end suite.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use bpfproxy_tests::{agent, manifest, require_root, Sandbox, SandboxConfig};

const VIP: &str = "10.96.0.10";

#[test]
fn agent_guard_serves_a_cluster_ip_and_survives_restart() -> Result<()> {
    require_root()?;
    let sb = Sandbox::with_config(SandboxConfig {
        backends: 3,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..SandboxConfig::default()
    })?;
    let ips = sb.backend_ips();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[
            manifest::service(
                "default/web",
                VIP,
                &[("http", 80, 8080, "TCP"), ("dns", 53, 5353, "UDP")],
            ),
            manifest::endpoint_slice(
                "default/web",
                "web-1",
                &ip_refs,
                &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
                &[],
            ),
        ]),
    )?;
    let mut a = sb.start_agent()?;
    let dump = a.wait_for_backends(
        VIP,
        80,
        "TCP",
        &sb.backend_addrs(8080),
        Duration::from_secs(20),
    )?;
    ensure!(
        agent::frontend(&dump, VIP, 80, "TCP").and_then(|f| f["service"].as_str())
            == Some("default/web:http"),
        "{dump}"
    );

    // The conntrack sweep after the first sync makes the programs trust
    // the confirmed-table filter, which the agent distrusted at its start.
    let trusted = |d: &serde_json::Value| d["conntrack_filter"]["trusted"] == true;
    a.wait_until(trusted, Duration::from_secs(20))?;

    let r = sb.probe_tcp(&format!("{VIP}:80"), 60)?;
    ensure!(r.ok == 60 && r.by_backend.len() == 3, "{r:?}");
    let u = sb.probe_udp(&format!("{VIP}:53"), 30)?;
    ensure!(
        u.ok == 30 && u.sources == vec![format!("{VIP}:53")],
        "{u:?}"
    );

    let mut held = sb.hold(&format!("{VIP}:80"))?;
    let first = held.ping()?;

    // SIGKILL: pins keep the datapath; the held connection is untouched.
    a.kill()?;
    ensure!(!a.is_running());
    ensure!(sb.probe_tcp(&format!("{VIP}:80"), 10)?.ok == 10);
    a.start_again()?;
    a.wait_for_backends(
        VIP,
        80,
        "TCP",
        &sb.backend_addrs(8080),
        Duration::from_secs(20),
    )?;
    a.restart()?;
    a.wait_for_backends(
        VIP,
        80,
        "TCP",
        &sb.backend_addrs(8080),
        Duration::from_secs(20),
    )?;
    ensure!(held.ping()? == first, "the held connection moved");
    a.wait_until(trusted, Duration::from_secs(20))?;
    ensure!(sb.probe_tcp(&format!("{VIP}:80"), 10)?.ok == 10);
    ensure!(a.log_tail(200).contains("start #3"), "{}", a.log_tail(20));
    ensure!(!a.dump_text()?.is_empty());
    Ok(())
}
